"""Issue 9 item 1: a host key is never guessed. A failed read of the VM's published keys (5xx,
timeout) is retried and then refused, never taken for "publishes none"; trust on first use only
when the API says the VM published nothing, said loudly; a pinned key that disagrees with the
published ones is reported and replaced everywhere, `status` and `start` included, so plain
`ssh NAME` refuses the impostor too. Real sshd, fake Compute."""

from __future__ import annotations

import subprocess
from pathlib import Path

from gcpdl.ssh import hostkeys
from tests.helpers import run

GUEST = "compute.instances.getGuestAttributes"
# a valid ed25519 public key that the fixture sshd does not hold: "the impostor's key"
IMPOSTOR = hostkeys.HostKey("ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIDQ5w7oNyQm0Zx2m1b1ZKZtJp0mC5hH0yTQp4QGJ2x6a")


def _alias(ssh_vm) -> str:
    return hostkeys.host_alias(ssh_vm.instance_id)


def _published(ssh_vm) -> set[hostkeys.HostKey]:
    return {hostkeys.HostKey(t, b) for t, b in ssh_vm.sshd.host_public_keys.items()}


def test_a_failing_host_key_read_is_refused_not_trusted_on_first_use(ssh_vm, monkeypatch):
    monkeypatch.setenv("GCPDL_SSH_WAIT", "1")  # the retry budget: short, but several attempts
    ssh_vm.gcp.fail_next(503, times=10_000, path="getGuestAttributes")
    r = run("ssh", "box", "--", "echo connected")
    assert r.exit_code == 1, r.output
    assert "connected" not in r.stdout
    assert r.stderr.startswith("Error: Could not read the SSH host keys VM box publishes (HTTP 503)")
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.output
    assert len(ssh_vm.gcp.calls(GUEST)) > 1  # retried, not given up at the first failure
    assert hostkeys.read_known(_alias(ssh_vm)) == []  # nothing pinned


def test_a_transient_failure_is_retried_and_the_published_keys_used(ssh_vm):
    ssh_vm.gcp.fail_next(503, times=2, path="getGuestAttributes")
    r = run("ssh", "box", "--", "echo connected")
    assert (r.exit_code, r.stdout) == (0, "connected\n"), r.output
    assert "first use" not in r.stderr
    assert set(hostkeys.read_known(_alias(ssh_vm))) == _published(ssh_vm)


def test_a_timed_out_read_is_refused(ssh_vm, monkeypatch):
    monkeypatch.setenv("GCPDL_SSH_WAIT", "0.5")
    ssh_vm.gcp.method_latency[GUEST] = 2.0  # longer than the whole budget: every attempt times out
    r = run("ssh", "box", "--", "echo connected")
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith("Error: Could not read the SSH host keys VM box publishes (")
    assert hostkeys.read_known(_alias(ssh_vm)) == []


def test_trust_on_first_use_only_when_nothing_is_published_and_said_with_the_fingerprint(ssh_vm):
    ssh_vm.gcp.guest_attrs[(ssh_vm.zone, "box")].pop("hostkeys")  # the API answers 404
    r = run("ssh", "box", "--", "echo connected")
    assert (r.exit_code, r.stdout) == (0, "connected\n"), r.output
    (pinned,) = hostkeys.read_known(_alias(ssh_vm))
    assert pinned in _published(ssh_vm)
    assert r.stderr == (f"Warning: VM box published no SSH host keys (its guest attributes are empty or turned off), "
                        f"so gcpdl cannot verify it: trusting the {pinned.type} key it presented on first use, and no "
                        f"other from now on: {pinned.fingerprint()}\n")


def test_status_rechecks_a_pinned_key_and_plain_ssh_then_refuses_the_impostor(ssh_vm, isolated_env: Path):
    """An earlier first-use pin (say, while the guest attributes could not be read) holds the
    impostor's key; the VM publishes its real keys. `status` must report it and replace the pin."""
    hostkeys.store(_alias(ssh_vm), [IMPOSTOR])
    r = run("status")
    assert r.exit_code == 0, r.output
    assert f"Warning: VM box's host key pinned earlier ({IMPOSTOR.fingerprint()}) is not one it publishes" in r.stderr
    assert set(hostkeys.read_known(_alias(ssh_vm))) == _published(ssh_vm)
    # and the system ssh client, through the refreshed Host block, reaches the real sshd
    ssh = subprocess.run(["ssh", "-F", str(isolated_env / ".ssh" / "config"), "-o", "BatchMode=yes", "box", "echo", "real"],
                         capture_output=True, text=True, timeout=30)
    assert (ssh.returncode, ssh.stdout) == (0, "real\n"), ssh.stderr


def test_gcpdl_ssh_reports_a_pinned_key_the_vm_does_not_publish(ssh_vm):
    hostkeys.store(_alias(ssh_vm), [IMPOSTOR])
    r = run("ssh", "box", "--", "echo connected")
    assert (r.exit_code, r.stdout) == (0, "connected\n"), r.output
    assert f"Warning: VM box's host key pinned earlier ({IMPOSTOR.fingerprint()}) is not one it publishes" in r.stderr
    assert IMPOSTOR not in hostkeys.read_known(_alias(ssh_vm))


def test_status_refuses_to_refresh_when_the_read_fails(ssh_vm, monkeypatch):
    monkeypatch.setenv("GCPDL_SSH_WAIT", "0.5")
    hostkeys.store(_alias(ssh_vm), [IMPOSTOR])
    ssh_vm.gcp.fail_next(500, times=10_000, path="getGuestAttributes")
    r = run("status")
    assert r.exit_code == 0, r.output  # status itself still answers
    assert "Warning: Could not update the ssh config entry for box: Could not read the SSH host keys" in r.stderr
    assert hostkeys.read_known(_alias(ssh_vm)) == [IMPOSTOR]  # nothing new trusted on a failed read


def test_up_waits_for_a_new_vm_to_publish_its_keys_instead_of_trusting_on_first_use(ssh_vm, jupyter_server):
    """Right after boot the guest agent may not have published the keys yet: for a VM `up` just
    made (guest attributes on), a 404 then means "not yet", not "none"."""
    from gcpdl.clients import ClientFactory
    from gcpdl.deadline import Deadline
    from gcpdl.settings import resolve
    from gcpdl.ssh.ready import wait_ready

    ssh_vm.gcp.set_guest_attributes(ssh_vm.zone, "box", "gcpdl", {"stage": "ready"})
    ssh_vm.gcp.fail_next(404, times=3, path="getGuestAttributes")  # the first host-key reads: not published yet
    said: list[str] = []
    wait_ready(ClientFactory(resolve()), "box", ssh_vm.zone, Deadline(60), said.append, follow_startup=False)
    assert not any("first use" in line for line in said), said
    assert "Waiting for box to publish its SSH host keys..." in said
    assert set(hostkeys.read_known(_alias(ssh_vm))) == _published(ssh_vm)
