"""Find the VM's Jupyter server and its token, over SSH, with Jupyter's own mechanism.

`jupyter server list --json` reads the runtime files of the servers the login user runs, so
the gcpdl-jupyter service is found, and so is a server the user started by hand. The token
travels back inside the SSH connection and is only ever put in the URL printed on stdout.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gcpdl.errors import GcpdlError
from gcpdl.startup import JUPYTER_PORT, JUPYTER_UNIT

if TYPE_CHECKING:  # pragma: no cover
    from gcpdl.ssh.session import Session
    from gcpdl.ssh.target import SshTarget

# DLVM images keep jupyter in /opt/conda/bin, which a non-login shell's PATH lacks
LIST_COMMAND = 'PATH="$PATH:/opt/conda/bin:/opt/gcpdl/bin:/usr/local/bin"; jupyter server list --json'
DIAGNOSE_COMMAND = (
    f"systemctl is-active {JUPYTER_UNIT} 2>&1; "
    f"journalctl -u {JUPYTER_UNIT} -n 15 --no-pager -o cat 2>&1 | tail -n 15"
)
LIST_TIMEOUT = 60.0
_TOKEN_RE = re.compile(r"(token=)[^&\s\"']+", re.IGNORECASE)


class JupyterNotRunning(GcpdlError):
    """No Jupyter server answers on the VM; ``details`` holds the service status and log tail."""

    def __init__(self, message: str, fix: str | None = None, details: list[str] | None = None):
        super().__init__(message, fix)
        self.details = details or []


@dataclass(frozen=True)
class RemoteJupyter:
    port: int
    token: str = field(repr=False)  # never in a repr, a log line or an error message
    base_url: str = "/"
    host: str = "127.0.0.1"
    root_dir: str = ""
    pid: int | None = None

    @property
    def remote(self) -> tuple[str, int]:
        return (self.host, self.port)

    def url(self, local_port: int, with_token: bool = True) -> str:
        base = "/" + self.base_url.strip("/") + "/" if self.base_url.strip("/") else "/"
        url = f"http://127.0.0.1:{local_port}{base}"
        if with_token and self.token:
            url += f"?token={self.token}"
        return url


REDIRECT_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="1;url={url}">
<title>Opening JupyterLab</title></head>
<body><script>window.location.replace({url_js});</script>
<p>Opening JupyterLab... <a href="{url}">click here</a> if nothing happens.</p></body></html>
"""


def write_redirect(url: str, directory: Path, name: str) -> Path:
    """A 0600 file (in a 0700 folder) that sends the browser on to ``url``, token included.
    The browser is started on this file, not on the URL: a process's arguments are readable by
    every local user (/proc/PID/cmdline), a 0600 file is not. Jupyter's own launcher does the
    same (jpserver-PID-open.html)."""
    import html

    from gcpdl.files import private_dir, write_private

    private_dir(directory)
    text = REDIRECT_HTML.format(url=html.escape(url, quote=True), url_js=json.dumps(url).replace("<", "\\u003c"))
    return write_private(redirect_path(directory, name), text)


def redirect_path(directory: Path, name: str) -> Path:
    """Where this process's redirect file for VM ``name`` goes (known before it is written, so its
    removal can be arranged first: a Ctrl-C between writing and arranging would leave it)."""
    return directory / f"{name}-{os.getpid()}-open.html"


def open_browser(url: str, directory: Path, name: str) -> Path:
    """Open the default browser on a redirect file for ``url``; returns the file, which the
    caller removes when the tunnel closes."""
    import webbrowser

    path = write_redirect(url, directory, name)
    webbrowser.open(path.as_uri())
    return path


def redact(text: str) -> str:
    return _TOKEN_RE.sub(r"\1<redacted>", text)


def parse_server_list(text: str) -> list[RemoteJupyter]:
    """One JSON object per line (jupyter_server >= 1); lines that are not JSON are skipped."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            info = json.loads(line)
        except ValueError:
            continue
        if "port" not in info:
            continue
        host = info.get("hostname") or "127.0.0.1"
        # a server bound to localhost / all interfaces is reachable on the VM's loopback
        if host in ("localhost", "0.0.0.0", "::", "", "127.0.0.1"):
            host = "127.0.0.1"
        out.append(
            RemoteJupyter(
                port=int(info["port"]),
                token=info.get("token") or "",
                base_url=info.get("base_url") or "/",
                host=host,
                root_dir=info.get("root_dir") or info.get("notebook_dir") or "",
                pid=info.get("pid"),
            )
        )
    return out


def choose(servers: list[RemoteJupyter], prefer_port: int = JUPYTER_PORT) -> RemoteJupyter | None:
    """gcpdl's own service if it is among them, else the first one listed."""
    for s in servers:
        if s.port == prefer_port:
            return s
    return servers[0] if servers else None


def diagnose(session: "Session") -> list[str]:
    """The service's state and the tail of its log, tokens redacted."""
    try:
        result = session.run(DIAGNOSE_COMMAND, timeout=30)
    except GcpdlError as e:
        return [f"(could not read the service status: {e.message})"]
    return [redact(line) for line in result.stdout.splitlines() if line.strip()]


def restart_hint(target: "SshTarget") -> str:
    """How to restart Jupyter, for this login: sudo is the guest agent's google-sudoers for a
    metadata-key user, but only roles/compute.osAdminLogin for an OS Login user; a stop and
    start works for everyone (the startup script starts Jupyter at every boot)."""
    name = target.name
    if not target.oslogin:
        return f"Restart it with: gcpdl ssh {name} -- sudo systemctl restart {JUPYTER_UNIT}"
    return (f"Restart the VM (its startup script starts Jupyter again): gcpdl stop {name}, then gcpdl start {name}. "
            f"With roles/compute.osAdminLogin (sudo): gcpdl ssh {name} -- sudo systemctl restart {JUPYTER_UNIT}")


def find_server(session: "Session", prefer_port: int = JUPYTER_PORT) -> RemoteJupyter:
    result = session.run(LIST_COMMAND, timeout=LIST_TIMEOUT)
    server = choose(parse_server_list(result.stdout), prefer_port)
    if server is None:
        name = session.target.name
        reason = "is not installed on the VM" if result.exit_code == 127 else "is not running on the VM"
        raise JupyterNotRunning(
            f"Jupyter {reason} {name} (`jupyter server list` found no server).",
            fix=restart_hint(session.target),
            details=diagnose(session),
        )
    return server


def check_reachable(session: "Session", server: RemoteJupyter) -> None:
    """Open (and close) one forwarded connection to the server: a stale runtime file, or a
    server that died, shows up here rather than as a broken page in the browser."""
    from gcpdl.ssh.tunnel import RemotePortClosed, open_forward

    try:
        chan = open_forward(session.transport, server.remote)
    except RemotePortClosed:
        name = session.target.name
        raise JupyterNotRunning(
            f"Jupyter on VM {name} does not answer on port {server.port}.",
            fix=restart_hint(session.target),
            details=diagnose(session),
        ) from None
    chan.close()
