"""A whole boot of the startup script (``main``) on the stand-in VM of test_startup_template:
the guest attribute writes it makes are counted, dropped writes are retried, and the VM's host
keys are republished when the published ones are not what sshd has (issue 8, section 3)."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from gcpdl.startup import GUEST_AGENT_BOOT_WRITES, GUEST_ATTR_WRITES_PER_MINUTE
from tests.test_startup_template import Vm, _stub

# gcpdl's share of the per-minute budget once the guest agent has written its own at boot
SHARE = GUEST_ATTR_WRITES_PER_MINUTE - GUEST_AGENT_BOOT_WRITES

BOOTS = {
    # the most stages a boot has: GPU, a data disk formatted on this (first) boot, autostop
    "gpu-disk-first-boot": dict(gpu=True, data_disk=True, autostop_minutes=60),
    "cpu-nodisk": dict(gpu=False, data_disk=False, autostop_minutes=None),
}


@pytest.fixture
def vm():
    machine = Vm()
    machine.home.mkdir()
    os.chown(machine.home, machine.uid, machine.gid)
    yield machine
    machine.close()


def boot(vm: Vm, **options) -> tuple[int, str]:
    if options.get("data_disk"):
        if os.geteuid() != 0:
            pytest.skip("the data disk step checks for a block device: mknod needs root")
        if not vm.device.exists():
            os.mknod(vm.device, stat.S_IFBLK | 0o600, os.makedev(7, 0))
    r = vm.run(vm.script(**options), "main")
    return r.returncode, r.stdout + r.stderr


def windows(times: list[int], width: int) -> int:
    """The most writes inside any ``width``-second window."""
    return max((sum(1 for u in times if t <= u < t + width) for t in times), default=0)


@pytest.mark.parametrize("name", sorted(BOOTS))
def test_a_full_boot_stays_within_the_guest_attribute_budget(vm, name):
    rc, out = boot(vm, **BOOTS[name])
    assert rc == 0, out
    assert vm.metadata.attrs.get("gcpdl/stage") == "ready"
    assert "gcpdl/error" not in vm.metadata.attrs  # a clean boot never writes error ""
    times = [t for k, _, t in vm.metadata.puts if k.startswith("gcpdl/")]
    # the whole boot here takes seconds on the script's clock: every write falls in one minute
    assert len(times) <= SHARE, vm.metadata.puts
    # one a second at most: with the agent's own burst, a VM stays near its 3 a second
    assert windows(times, 60) <= SHARE and windows(times, 1) <= 1, vm.metadata.puts


def test_a_slow_boot_shows_each_long_step(vm):
    # the driver takes minutes: `up` must say so, even though the stages before it used the budget
    _stub(vm.bin, "nvidia-smi", f'n=$(( $(cat {vm.root}/n 2>/dev/null || echo 0) + 1 )); echo $n > {vm.root}/n\n'
          '[ "$n" -gt 40 ] && echo "GPU 0: Tesla T4" && exit 0; exit 9\n')
    rc, out = boot(vm, gpu=True, data_disk=False, guest_attr_writes_per_minute=2)
    assert rc == 0, out
    stages = [v for k, v, _ in vm.metadata.puts if k == "gcpdl/stage"]
    assert stages[:2] == ["boot", "driver"] and stages[-1] == "ready"
    times = [t for k, _, t in vm.metadata.puts if k.startswith("gcpdl/")]
    assert windows(times, 60) <= 2


def test_a_dropped_ready_is_written_again(vm):
    vm.metadata.attrs["gcpdl/stage"] = "ready"  # left by the previous boot
    vm.metadata.drop[("gcpdl/stage", "ready")] = 2  # over the budget: answered, not kept
    rc, out = boot(vm, gpu=False, data_disk=False)
    assert rc == 0, out
    readies = [v for k, v, _ in vm.metadata.puts if (k, v) == ("gcpdl/stage", "ready")]
    assert len(readies) == 3 and vm.metadata.attrs["gcpdl/stage"] == "ready"
    assert "did not read back (attempt 1 of 6)" in out


def test_a_dropped_error_is_written_again(vm):
    _stub(vm.bin, "nvidia-smi", 'echo "NVIDIA-SMI has failed"; exit 9\n')
    error = "NVIDIA driver not ready after 10s: NVIDIA-SMI has failed"
    vm.metadata.drop[("gcpdl/error", error)] = 1
    rc, out = boot(vm, gpu=True, data_disk=False, driver_wait_seconds=10)
    assert rc == 1, out
    assert [v for k, v, _ in vm.metadata.puts if k == "gcpdl/error"] == [error, error]
    assert vm.metadata.attrs["gcpdl/error"] == error


def test_an_error_from_an_earlier_boot_is_cleared_once(vm):
    vm.metadata.attrs.update({"gcpdl/error": "NVIDIA driver not ready after 900s", "gcpdl/stage": "failed"})
    rc, out = boot(vm, gpu=False, data_disk=False)
    assert rc == 0, out
    assert vm.metadata.attrs["gcpdl/error"] == "" and vm.metadata.attrs["gcpdl/stage"] == "ready"
    assert [v for k, v, _ in vm.metadata.puts if k == "gcpdl/error"] == [""]
    # the next boot finds nothing to clear
    vm.metadata.puts.clear()
    rc, out = boot(vm, gpu=False, data_disk=False)
    assert rc == 0, out
    assert [k for k, _, _ in vm.metadata.puts if k == "gcpdl/error"] == []


# --- host keys: the agent publishes them on an instance's first boot only ---------------------
def _host_key(vm: Vm, kind: str, blob: str, comment: str = "root@vm") -> None:
    short = {"ssh-ed25519": "ed25519", "ecdsa-sha2-nistp256": "ecdsa", "ssh-rsa": "rsa"}[kind]
    (vm.ssh_dir / f"ssh_host_{short}_key.pub").write_text(f"{kind} {blob} {comment}\n")
    (vm.ssh_dir / f"ssh_host_{short}_key").write_text("private\n")


def test_host_keys_are_republished_only_when_they_differ(vm):
    _host_key(vm, "ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIEd25519new")
    _host_key(vm, "ecdsa-sha2-nistp256", "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYecdsa")
    _host_key(vm, "ssh-rsa", "AAAAB3NzaC1yc2EAAAADAQABrsa")
    vm.metadata.attrs.update({
        "hostkeys/ssh-ed25519": "AAAAC3NzaC1lZDI1NTE5AAAAIEd25519old",  # regenerated since
        "hostkeys/ecdsa-sha2-nistp256": "AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYecdsa",  # as published
        # ssh-rsa: the agent's write was dropped, or set_host_keys is off
    })
    rc, out = boot(vm, gpu=False, data_disk=False)
    assert rc == 0, out
    assert sorted((k, v) for k, v, _ in vm.metadata.puts if k.startswith("hostkeys/")) == [
        ("hostkeys/ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIEd25519new"),
        ("hostkeys/ssh-rsa", "AAAAB3NzaC1yc2EAAAADAQABrsa"),
    ]
    assert vm.metadata.attrs["hostkeys/ssh-rsa"] == "AAAAB3NzaC1yc2EAAAADAQABrsa"
    # every later boot: what is published is what sshd has, nothing is written
    vm.metadata.puts.clear()
    rc, out = boot(vm, gpu=False, data_disk=False)
    assert rc == 0, out
    assert [k for k, _, _ in vm.metadata.puts if k.startswith("hostkeys/")] == []


def test_the_mismatch_fix_is_what_a_boot_does(tmp_path):
    # the fix printed on a host key mismatch is a restart; it works because every boot runs
    # publish_host_keys (above), not because the guest agent republishes (it does so only when
    # the instance id changes: google_guest_agent/instance_setup.go, generateSSHKeys)
    from gcpdl.errors import HostKeyMismatch
    from gcpdl.ssh.hostkeys import HostKey, check
    from gcpdl.startup import StartupOptions, render_startup_script

    with pytest.raises(HostKeyMismatch) as e:
        check(HostKey("ssh-ed25519", base64.b64encode(b"b" * 51).decode()), "box", "gcpdl-1",
              [HostKey("ssh-ed25519", base64.b64encode(b"a" * 51).decode())], tmp_path / "known_hosts")
    assert "gcpdl stop box && gcpdl start box" in e.value.fix and "guest agent only" in e.value.fix
    main = render_startup_script(StartupOptions()).split("\nmain() {\n")[1]
    assert "\n  publish_host_keys\n" in main
