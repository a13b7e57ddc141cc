"""The end of `up`: follow the startup script through its guest attributes, then wait for SSH
and Jupyter, and leave the ssh config ready.

The startup script writes `gcpdl/stage` (boot, driver, disk, jupyter, ready) and `gcpdl/error`.
Each new stage is reported once ("installing the NVIDIA driver..."); an error ends the wait
with the script's own reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from gcpdl.deadline import Deadline
from gcpdl.errors import DeadlineExceeded, GcpdlError
from gcpdl.startup import STAGES

Report = Callable[[str], None]
Stage = Callable[[str], None]  # a stage key: one of gcpdl.startup.STAGES, or "ssh"

# What each wait usually takes on a fresh VM (Deep Learning VM image, first boot), for the live
# line `up` shows. The driver step dominates: DKMS builds the module for the running kernel.
TYPICAL: dict[str, str] = {
    "boot": "usually under a minute",
    "driver": "usually 3-5 min",
    "disk": "usually seconds",
    "formatting-disk": "usually under a minute",
    "jupyter": "usually under a minute",
    "autostop": "usually seconds",
    "ssh": "usually under a minute",
}
WAIT_LABELS: dict[str, str] = {"ssh": "waiting for SSH and Jupyter"}


def stage_label(key: str) -> str:
    return WAIT_LABELS.get(key) or STAGES.get(key, key)


# The startup script's own lines, copied world-readable (no secrets in them) by its log(): the
# journal needs sudo or the adm/systemd-journal group, and an OS Login user with only
# roles/compute.osLogin has neither (sudo comes with roles/compute.osAdminLogin).
STARTUP_LOG = "/var/log/gcpdl/startup.log"


def startup_log_command(name: str, lines: int | None = None) -> str:
    """The command that shows the setup log, for any login user (no sudo)."""
    if lines:
        return f"gcpdl ssh {name} -- tail -n {lines} {STARTUP_LOG}"
    return f"gcpdl ssh {name} -- cat {STARTUP_LOG}"
PUBLISH_GRACE = 60.0  # seconds a new VM's guest agent gets to publish its host keys


class StartupFailed(GcpdlError):
    pass


@dataclass(frozen=True)
class Ready:
    name: str
    host: str
    instance_id: str
    jupyter_port: int  # on the VM
    ssh_config_host: str  # `ssh NAME` works

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "host": self.host,
            "instance_id": self.instance_id,
            "jupyter_port": self.jupyter_port,
            "ssh": f"ssh {self.ssh_config_host}",
            "jupyter": f"gcpdl jupyter {self.name}",
        }


def wait_startup(factory: Any, name: str, zone: str, deadline: Deadline, report: Report, stage: Stage | None = None) -> None:
    """Poll the startup script's progress until it says ready (or failed). Each new stage goes
    to ``stage`` as its key when given, else to ``report`` as text ("installing the NVIDIA
    driver...")."""
    from gcpdl.ssh.target import guest_attributes

    seen = None
    poll = max(0.01, float(factory.settings.poll_interval))
    while True:
        attrs = guest_attributes(factory, zone, name, "gcpdl")
        current, error = attrs.get("stage"), (attrs.get("error") or "").strip()
        if error:
            raise StartupFailed(
                f"Setting up VM {name} failed: {error}",
                fix=f"Full log: {startup_log_command(name, lines=100)}",
            )
        if current and current != seen:
            seen = current
            if current == "ready":
                return
            if stage is not None:
                stage(current)
            else:
                report(STAGES.get(current, current) + "...")
        if deadline.expired():
            where = STAGES.get(seen or "", "starting up") if seen else "booting (no progress reported yet)"
            raise DeadlineExceeded(
                f"VM {name} was not ready after {deadline.seconds:g}s; last step: {where}.",
                fix=f"Check later with: gcpdl status {name}",
            )
        deadline.pause(min(poll, deadline.remaining()))


def wait_ready(factory: Any, name: str, zone: str, deadline: Deadline, report: Report, follow_startup: bool = True,
               stage: Stage | None = None) -> Ready:
    """Startup progress -> SSH (host key verified, key accepted) -> Jupyter answers -> the ssh
    config block. Everything under one deadline."""
    from gcpdl.jupyter import check_reachable, find_server, JupyterNotRunning
    from gcpdl.ssh.session import connect
    from gcpdl.ssh.sshconfig import refresh_host
    from gcpdl.ssh.target import resolve_target

    if follow_startup:
        wait_startup(factory, name, zone, deadline, report, stage)
    if stage is not None:
        stage("ssh")
    target = _with_published_keys(factory, resolve_target(factory, name, zone), deadline, report)
    if target.oslogin:
        # with a role missing, retrying the key until the deadline would only end in a timeout
        from gcpdl.oslogin import access_problem

        problem = access_problem(factory, target)
        if problem is not None:
            raise problem
    # a fresh VM's guest agent installs gcpdl's key a little after sshd starts: retry auth
    with connect(target, deadline, report=report, retry_auth=True) as session:
        refresh_host(name, target.host or "", target.instance_id, user=target.user, port=target.port)
        poll = max(0.01, float(factory.settings.poll_interval))
        while True:
            try:
                server = find_server(session)
                check_reachable(session, server)
                break
            except JupyterNotRunning:
                if deadline.expired():
                    raise
                deadline.pause(min(poll, deadline.remaining()))
    if stage is not None:
        stage("ready")
    else:
        report("ready")
    return Ready(name, target.host or "", target.instance_id, server.port, name)


def _with_published_keys(factory: Any, target: Any, deadline: Deadline, report: Report) -> Any:
    """A VM `up` made has guest attributes on, and its guest agent publishes the host keys at
    boot; until it has, "none published" means "not yet", so wait for them (up to
    PUBLISH_GRACE within the deadline) rather than trust a key on first use. Only a VM that
    still publishes nothing after that (an image without the guest agent) falls back to first
    use, with the warning and the fingerprint."""
    import dataclasses

    from gcpdl.ssh.hostkeys import read_known
    from gcpdl.ssh.target import guest_hostkeys

    if target.guest_keys or read_known(target.alias):
        return target
    grace = Deadline(min(PUBLISH_GRACE, deadline.remaining()), what=f"the host keys of {target.name}",
                     clock=deadline.clock, sleep=deadline.sleep)
    poll = max(0.01, float(factory.settings.poll_interval))
    report(f"Waiting for {target.name} to publish its SSH host keys...")
    while not grace.expired():
        grace.sleep(min(poll, grace.remaining()))
        keys = guest_hostkeys(factory, factory.project(), target.zone, target.name, deadline=grace)
        if keys:
            return dataclasses.replace(target, guest_keys=tuple(keys))
    return target


def ready_hook(factory: Any, report: Report, stage: Stage | None = None) -> Callable[[Any, Deadline], dict[str, Any]]:
    """The ``ready`` step of gcpdl.compute.lifecycle.UpContext: (instance with .name and .zone,
    deadline) -> what `up` prints about how to connect."""

    def step(instance: Any, deadline: Deadline) -> dict[str, Any]:
        return wait_ready(factory, instance.name, instance.zone, deadline, report, stage=stage).as_dict()

    return step
