"""The VM's startup script: templates/startup.sh.j2 (+ jupyter.service.j2, and the autostop
agent's autostop.sh.j2, always: the agent honours "off"), rendered by one function.

`up` calls ``render_startup_script(StartupOptions(...))`` and sends the result as the
`startup-script` metadata value. The script reports progress in the guest attribute
namespace ``gcpdl`` (keys ``stage`` and ``error``); ``STAGES`` says what each stage means to
a person, for ``gcpdl.ssh.ready.wait_ready``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gcpdl.errors import InvalidInput

JUPYTER_PORT = 8888  # where the gcpdl-jupyter service listens on the VM (127.0.0.1 only)
JUPYTER_UNIT = "gcpdl-jupyter.service"

# guest attribute gcpdl/stage -> what `up` prints while waiting
STAGES: dict[str, str] = {
    "boot": "starting up",
    "driver": "installing the NVIDIA driver",
    "disk": "preparing the data disk",
    "formatting-disk": "formatting the data disk (first boot only)",
    "jupyter": "starting Jupyter",
    "autostop": "installing the autostop agent",
    "ready": "ready",
    "failed": "failed",
}

_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class StartupOptions:
    user: str = "gcpdl"
    data_disk: bool = False  # a separate persistent disk named NAME-data, attached as device "data"
    gpu: bool = True
    autostop_minutes: int | None = 60  # None: autostop off
    jupyter_port: int = JUPYTER_PORT
    driver_wait_seconds: int = 900  # the DLVM installs the driver on first boot: minutes
    jupyter_wait_seconds: int = 300

    @property
    def agent_files(self) -> dict[str, str]:
        """The autostop agent's source files for templates/autostop.sh.j2 (issue 5)."""
        from gcpdl.agent import agent_sources

        return agent_sources()


def render_startup_script(options: StartupOptions) -> str:
    from gcpdl.render import render

    # the user name lands unquoted in a shell script and a systemd unit: allow only safe names
    if not _USER_RE.match(options.user):
        raise InvalidInput(f"'{options.user}' is not a valid Linux user name.")
    if not 1 <= int(options.jupyter_port) <= 65535:
        raise InvalidInput(f"Jupyter port {options.jupyter_port} is out of range.")
    return render("startup.sh.j2", o=options)
