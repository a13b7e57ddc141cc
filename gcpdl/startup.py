"""The VM's startup script: templates/startup.sh.j2 (+ jupyter.service.j2, and the autostop
agent's autostop.sh.j2, always: the agent honours "off"), rendered by one function.

`up` calls ``render_startup_script(StartupOptions(...))`` and sends the result as the
`startup-script` metadata value. The script reports progress in the guest attribute
namespace ``gcpdl`` (keys ``stage`` and ``error``); ``STAGES`` says what each stage means to
a person, for ``gcpdl.ssh.ready.wait_ready``. It writes a stage only when it changed and the
write budget has room (stages in between may be skipped), and reads ``ready`` or the error
back until the metadata server holds it. It also republishes the VM's sshd host keys
(``hostkeys/TYPE``) when the published ones differ from what sshd has.
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
    "scratch": "preparing the local SSDs at /scratch",
    "jupyter": "starting Jupyter",
    "autostop": "installing the autostop agent",
    "ready": "ready",
    "failed": "failed",
}

# the names Google's OS Login NSS module accepts (guest-oslogin kUserNameRegex): OS Login names
# users after their email, so "2019123@student.example.edu" is 2019123_student_example_edu.
# Shell- and unit-safe as they are; all digits (read as a uid) and dots only (a path) are refused.
_USER_RE = re.compile(r"(?![0-9]+\Z)(?!\.+\Z)[A-Za-z0-9._][A-Za-z0-9._-]{0,31}")  # fullmatch: no "name\n"

# Guest attributes: Google documents about 10 writes a minute and 3 a second per VM, beyond
# which writes may be dropped; the guest agent spends 4 at boot (its host keys and more).
GUEST_ATTR_WRITES_PER_MINUTE = 10
GUEST_AGENT_BOOT_WRITES = 4


@dataclass(frozen=True)
class StartupOptions:
    user: str = "gcpdl"
    data_disk: bool = False  # a separate persistent disk named NAME-data, attached as device "data"
    gpu: bool = True
    local_ssd: int = 0  # local NVMe SSDs to stripe and mount at /scratch (re-made when blank)
    autostop_minutes: int | None = 60  # None: autostop off
    jupyter_port: int = JUPYTER_PORT
    scratch_wait_seconds: int = 120  # the local SSDs' device links appear within seconds of boot
    driver_wait_seconds: int = 900  # the DLVM installs the driver on first boot: minutes
    jupyter_wait_seconds: int = 300
    # the guest agent (ssh-keys) or OS Login's NSS module provides the login user; wait this long
    user_wait_seconds: int = 180
    # each of apt-get and pip when JupyterLab must be installed (a VM with no internet hangs)
    install_wait_seconds: int = 600
    # gcpdl's share of the guest attribute budget in any minute, the agent's boot writes aside
    guest_attr_writes_per_minute: int = 5

    @property
    def agent_files(self) -> dict[str, str]:
        """The autostop agent's source files for templates/autostop.sh.j2 (issue 5)."""
        from gcpdl.agent import agent_sources

        return agent_sources()


def render_startup_script(options: StartupOptions) -> str:
    from gcpdl.render import render

    # the user name lands unquoted in a shell script and a systemd unit: allow only safe names
    if not _USER_RE.fullmatch(options.user):
        raise InvalidInput(f"'{options.user}' is not a valid Linux user name.")
    if not 1 <= int(options.jupyter_port) <= 65535:
        raise InvalidInput(f"Jupyter port {options.jupyter_port} is out of range.")
    share = GUEST_ATTR_WRITES_PER_MINUTE - GUEST_AGENT_BOOT_WRITES
    if not 2 <= int(options.guest_attr_writes_per_minute) <= share:
        # 2: one stage and the final word; above the share, the agent's writes and gcpdl's overrun
        raise InvalidInput(f"guest_attr_writes_per_minute must be between 2 and {share}.")
    if not 0 <= int(options.local_ssd) <= 24:
        raise InvalidInput(f"local_ssd must be between 0 and 24, not {options.local_ssd}.")
    for field in ("scratch_wait_seconds", "driver_wait_seconds", "jupyter_wait_seconds", "user_wait_seconds", "install_wait_seconds"):
        if int(getattr(options, field)) < 1:
            raise InvalidInput(f"{field} must be at least 1 second.")
    return render("startup.sh.j2", o=options)
