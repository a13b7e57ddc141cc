"""Verified SSH sessions to a VM (paramiko), waited for under a deadline.

The host key is checked before authenticating (hostkeys.check: guest attributes, then gcpdl's
known_hosts, then trust on first use), so a key mismatch never sends anything to the wrong
host. A plain paramiko Transport is used rather than SSHClient because SSHClient can only look
keys up by "[host]:port", and gcpdl keys them by instance id.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from gcpdl.deadline import Deadline, backoff
from gcpdl.errors import GcpdlError, HostKeyMismatch, SshError
from gcpdl.ssh.hostkeys import HostKey, check, paramiko_key_types, read_known
from gcpdl.ssh.target import SshTarget

if TYPE_CHECKING:  # pragma: no cover
    import paramiko

Report = Callable[[str], None]

CONNECT_TIMEOUT = 15.0  # one TCP connect + SSH handshake attempt
RETRY_CAP = 5.0  # longest pause between attempts while a VM boots
BUFFER = 65536
# Measured with bench/tunnel_bench.py: AES-GCM (one pass, AES-NI) and a 16 MiB channel window
# roughly double paramiko's download rate over its defaults (aes128-ctr + HMAC, 2 MiB window).
WINDOW = 16 * 1024 * 1024
FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


@dataclass
class RunResult:
    exit_code: int
    stdout: str
    stderr: str


class KeyNotAuthorized(SshError):
    """The VM's sshd refused gcpdl's key (metadata ssh-keys not applied, or removed)."""


class ConnectTimedOut(SshError):
    """No answer at all from the VM's SSH port until the deadline: packets dropped on the way,
    which is what a firewall rule that no longer allows this laptop's address looks like."""


def _key_path(key_path: Path | None) -> Path:
    if key_path is not None:
        return key_path
    from gcpdl.ssh.keys import ensure_keypair

    return ensure_keypair().private_path


def open_transport(
    target: SshTarget,
    key_path: Path | None = None,
    timeout: float = CONNECT_TIMEOUT,
    report: Report | None = None,
) -> "paramiko.Transport":
    """One attempt: TCP connect, handshake, host-key check, public-key auth."""
    import paramiko

    if not target.host:
        raise SshError(f"VM {target.name} has no external IP address.")
    key_file = _key_path(key_path)
    sock = socket.create_connection((target.host, target.port), timeout=timeout)
    # small requests (Jupyter's REST and websocket frames) must not wait on Nagle
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport = paramiko.Transport(sock, default_window_size=WINDOW)
    try:
        options = transport.get_security_options()
        preferred = [c for c in FAST_CIPHERS if c in options.ciphers]
        options.ciphers = tuple(preferred + [c for c in options.ciphers if c not in preferred])
        expected = list(target.guest_keys) or read_known(target.alias)
        if expected:
            # offer only the algorithms of keys we can check, so the server presents one of them
            supported = set(transport._preferred_keys)
            types = [t for t in paramiko_key_types(expected) if t in supported]
            if types:
                options.key_types = types
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
        verdict = check(HostKey(key.get_name(), key.get_base64()), target.name, target.alias, target.guest_keys)
        note = verdict.message(target.name)
        if note and report:
            report(note)
        pkey = paramiko.PKey.from_path(key_file)
        transport.auth_publickey(target.user, pkey)
        return transport
    except BaseException:
        transport.close()
        raise


def _describe(e: BaseException) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (sshd not up yet)"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "connection timed out"
    text = str(e).strip() or type(e).__name__
    return text.split("\n")[0]


def connect(
    target: SshTarget,
    deadline: Deadline,
    key_path: Path | None = None,
    report: Report | None = None,
    retry_auth: bool = False,
) -> "Session":
    """Connect, retrying with backoff until ``deadline`` while the VM boots. An auth failure is
    retried only when ``retry_auth`` (a fresh VM whose guest agent has not installed the key
    yet); otherwise it means the key is missing and is reported at once."""
    import paramiko

    attempt = 0
    last = ""
    timed_out = False
    told = False
    while True:
        try:
            per_try = max(1.0, min(CONNECT_TIMEOUT, deadline.remaining()))
            return Session(open_transport(target, key_path, timeout=per_try, report=report), target)
        except HostKeyMismatch:
            raise
        except paramiko.AuthenticationException:
            if not retry_auth:
                from gcpdl.ssh.keys import key_dir

                raise KeyNotAuthorized(
                    f"VM {target.name} refused gcpdl's SSH key for user {target.user}.",
                    fix=(
                        f"The VM's 'ssh-keys' metadata must hold the line '{target.user}:<contents of "
                        f"{key_dir() / 'id_ed25519.pub'}>' (gcpdl up sets it when it creates a VM); add it back if it was removed."
                    ),
                ) from None
            last = "gcpdl's key is not installed on the VM yet"
        except (OSError, EOFError, paramiko.SSHException) as e:
            last = _describe(e)
            timed_out = isinstance(e, (socket.timeout, TimeoutError))
        if deadline.expired():
            raise (ConnectTimedOut if timed_out else SshError)(
                f"Could not connect to VM {target.name} over SSH at {target.host}:{target.port} "
                f"within {deadline.seconds:g}s ({last}).",
                fix=f"It may still be booting: check `gcpdl status {target.name}` and retry.",
            )
        if report and not told:
            report(f"Waiting for SSH on {target.name} ({last})...")
            told = True
        deadline.sleep(min(backoff(attempt, base=0.25, cap=RETRY_CAP), deadline.remaining()))
        attempt += 1


class Session:
    """An authenticated, host-key-verified SSH connection to one VM."""

    def __init__(self, transport: "paramiko.Transport", target: SshTarget):
        self.transport = transport
        self.target = target

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    def run(
        self,
        command: str,
        timeout: float | None = 60.0,
        stdout: Callable[[bytes], None] | None = None,
        stderr: Callable[[bytes], None] | None = None,
    ) -> RunResult:
        """Run ``command`` with the login shell; stream output to the callbacks if given,
        else collect it. Exit code 255 when the command died without one (as ssh does)."""
        chan = self.transport.open_session(timeout=timeout)
        try:
            chan.settimeout(timeout)
            chan.exec_command(command)
            # stdin gets EOF at once, like `ssh -n`; this is a session channel, not a forward
            chan.shutdown_write()
            out_parts: list[bytes] = []
            err_parts: list[bytes] = []
            sink_out = stdout or out_parts.append
            sink_err = stderr or err_parts.append
            error: list[BaseException] = []

            def drain_stderr() -> None:
                try:
                    while True:
                        data = chan.recv_stderr(BUFFER)
                        if not data:
                            return
                        sink_err(data)
                except BaseException as e:  # surfaced in the caller's thread
                    error.append(e)

            t = threading.Thread(target=drain_stderr, daemon=True)
            t.start()
            try:
                while True:
                    data = chan.recv(BUFFER)
                    if not data:
                        break
                    sink_out(data)
            except socket.timeout:
                raise SshError(f"`{command[:60]}` on VM {self.target.name} did not finish within {timeout:g}s.") from None
            t.join(timeout)
            if error and isinstance(error[0], socket.timeout):
                raise SshError(f"`{command[:60]}` on VM {self.target.name} did not finish within {timeout:g}s.")
            code = chan.recv_exit_status()
            return RunResult(
                255 if code < 0 else code,
                b"".join(out_parts).decode(errors="replace"),
                b"".join(err_parts).decode(errors="replace"),
            )
        finally:
            chan.close()


def target_session(app_factory: object, name: str, zone: str | None, report: Report | None = None) -> Session:
    """resolve_target + connect with the settings' wait: the common start of `ssh`/`jupyter`."""
    from gcpdl.ssh.target import resolve_target

    factory: object = app_factory
    target = resolve_target(factory, name, zone)
    seconds = float(getattr(getattr(factory, "settings"), "ssh_wait"))
    try:
        return connect(target, Deadline(seconds, what=f"SSH on {name}"), report=report)
    except ConnectTimedOut as e:
        # the usual cause on a laptop: a new network, so a new address the SSH rule does not allow
        from gcpdl.compute.firewall import moved_address

        # a cluster's node is reached through the cluster's rule
        hint = moved_address(factory, (target.instance.get("labels") or {}).get("gcpdl-cluster") or name)
        if hint is None:
            raise
        raise ConnectTimedOut(f"{e.message} {hint}", fix=f"Re-point the rule with: gcpdl start {name} (or gcpdl up {name})") from None
    except KeyNotAuthorized:
        if not target.oslogin:
            raise
        from gcpdl.oslogin import refusal

        raise refusal(factory, target) from None


__all__ = ["ConnectTimedOut", "GcpdlError", "KeyNotAuthorized", "RunResult", "Session", "connect", "open_transport", "target_session"]
