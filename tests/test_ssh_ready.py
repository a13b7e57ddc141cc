"""wait_ready, the end of `up`: startup progress from guest attributes, then SSH and Jupyter."""

from __future__ import annotations

import pytest

from gcpdl.clients import ClientFactory
from gcpdl.deadline import Deadline
from gcpdl.errors import DeadlineExceeded
from gcpdl.settings import resolve
from gcpdl.ssh import sshconfig
from gcpdl.ssh.ready import StartupFailed, wait_ready


def _fake_deadline(seconds: float) -> Deadline:
    clock = [0.0]
    return Deadline(seconds, clock=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + max(s, 0.01)))


def test_follows_stages_then_waits_for_ssh_and_jupyter(ssh_vm, jupyter_server):
    gcp = ssh_vm.gcp
    gcp.set_guest_attributes(ssh_vm.zone, "box", "gcpdl", {"stage": "driver"})
    progress = {"installing the NVIDIA driver...": "jupyter", "starting Jupyter...": "ready"}
    said: list[str] = []

    def report(line: str) -> None:
        said.append(line)
        if line in progress:  # the VM moves on while we wait
            gcp.set_guest_attributes(ssh_vm.zone, "box", "gcpdl", {"stage": progress[line]})

    ready = wait_ready(ClientFactory(resolve()), "box", ssh_vm.zone, Deadline(60), report)
    assert said == ["installing the NVIDIA driver...", "starting Jupyter...", "ready"]
    assert ready.jupyter_port == jupyter_server.port
    assert ready.as_dict()["ssh"] == "ssh box"
    block = sshconfig.managed_path().read_text()
    assert f"HostKeyAlias gcpdl-{ssh_vm.instance_id}" in block and f"Port {ssh_vm.sshd.port}" in block


def test_startup_failure_is_reported_with_its_reason(ssh_vm):
    ssh_vm.gcp.set_guest_attributes(ssh_vm.zone, "box", "gcpdl", {"stage": "failed", "error": "NVIDIA driver not ready after 900s: nvidia-smi not found"})
    with pytest.raises(StartupFailed) as e:
        wait_ready(ClientFactory(resolve()), "box", ssh_vm.zone, Deadline(60), lambda s: None)
    assert e.value.message == "Setting up VM box failed: NVIDIA driver not ready after 900s: nvidia-smi not found"


def test_deadline_names_the_last_step(ssh_vm):
    ssh_vm.gcp.set_guest_attributes(ssh_vm.zone, "box", "gcpdl", {"stage": "driver"})
    with pytest.raises(DeadlineExceeded) as e:
        wait_ready(ClientFactory(resolve()), "box", ssh_vm.zone, _fake_deadline(1), lambda s: None)
    assert e.value.message == "VM box was not ready after 1s; last step: installing the NVIDIA driver."


def test_ready_hook_fits_up(ssh_vm, jupyter_server):
    from types import SimpleNamespace

    from gcpdl.ssh.ready import ready_hook

    ssh_vm.gcp.set_guest_attributes(ssh_vm.zone, "box", "gcpdl", {"stage": "ready"})
    said: list[str] = []
    step = ready_hook(ClientFactory(resolve()), said.append)
    out = step(SimpleNamespace(name="box", zone=ssh_vm.zone), Deadline(60))
    assert out == {
        "name": "box", "host": "127.0.0.1", "instance_id": ssh_vm.instance_id,
        "jupyter_port": jupyter_server.port, "ssh": "ssh box", "jupyter": "gcpdl jupyter box",
    }
    assert said == ["ready"]
