"""Verified paramiko sessions against the real sshd fixture (no compute fake needed)."""

from __future__ import annotations

import pytest

from gcpdl.deadline import Deadline
from gcpdl.errors import HostKeyMismatch, SshError
from gcpdl.ssh import hostkeys
from gcpdl.ssh.hostkeys import HostKey
from gcpdl.ssh.keys import ensure_keypair
from gcpdl.ssh.session import KeyNotAuthorized, connect
from gcpdl.ssh.target import SshTarget


def make_target(sshd, guest=True, instance_id="1234", port=None) -> SshTarget:
    keys = tuple(HostKey(t, b) for t, b in sshd.host_public_keys.items()) if guest else ()
    return SshTarget("box", "us-central1-a", instance_id, "RUNNING", "127.0.0.1", port or sshd.port, sshd.user, keys)


@pytest.fixture
def key(sshd):
    kp = ensure_keypair()
    sshd.authorize(kp.public_line)
    return kp


def test_run_returns_exit_code_and_output(sshd, key):
    with connect(make_target(sshd), Deadline(10)) as s:
        r = s.run("echo out; echo err >&2; exit 3")
    assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")


def test_guest_keys_are_stored_under_instance_alias(sshd, key):
    with connect(make_target(sshd, instance_id="777"), Deadline(10)) as s:
        assert s.run("true").exit_code == 0
    stored = hostkeys.read_known("gcpdl-777")
    assert {k.type for k in stored} == set(sshd.host_public_keys)


def test_trust_on_first_use_reports_fingerprint_then_pins(sshd, key):
    notes: list[str] = []
    with connect(make_target(sshd, guest=False, instance_id="42"), Deadline(10), report=notes.append):
        pass
    assert len(notes) == 1 and "trusting" in notes[0] and "SHA256:" in notes[0]
    [pinned] = hostkeys.read_known("gcpdl-42")
    assert notes[0].endswith(pinned.fingerprint())
    notes.clear()
    with connect(make_target(sshd, guest=False, instance_id="42"), Deadline(10), report=notes.append):
        pass
    assert notes == []  # second time: verified against known_hosts, nothing to say


def test_changed_key_is_refused_with_reset_hint(sshd, key):
    # pin a different key for this instance, as if an earlier VM with this id had it
    hostkeys.store("gcpdl-99", [HostKey("ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIDQ5w7oNyQm0Zx2m1b1ZKZtJp0mC5hH0yTQp4QGJ2x6a")])
    with pytest.raises(HostKeyMismatch) as e:
        connect(make_target(sshd, guest=False, instance_id="99"), Deadline(10))
    assert "changed" in e.value.message
    assert e.value.fix.startswith("If you rebuilt the VM on purpose, reset it with: ssh-keygen -R gcpdl-99 -f ")


def test_guest_attributes_disagreeing_with_server_are_refused(sshd, key):
    bogus = (HostKey("ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIDQ5w7oNyQm0Zx2m1b1ZKZtJp0mC5hH0yTQp4QGJ2x6a"),)
    target = make_target(sshd)
    target = SshTarget(**{**target.__dict__, "guest_keys": bogus})
    with pytest.raises(HostKeyMismatch) as e:
        connect(target, Deadline(10))
    assert "does not match the keys it published" in e.value.message
    assert hostkeys.read_known(target.alias) == []  # nothing learned from a refused host


def test_missing_key_is_reported_at_once(sshd):
    ensure_keypair()  # exists, but not in authorized_keys
    with pytest.raises(KeyNotAuthorized) as e:
        connect(make_target(sshd), Deadline(30))
    assert e.value.message == f"VM box refused gcpdl's SSH key for user {sshd.user}."


def test_waits_under_deadline_then_says_why(key):
    from tests.fixtures.ports import free_port

    port = free_port()  # nothing listens: a VM whose sshd is not up
    target = SshTarget("box", "z", "5", "RUNNING", "127.0.0.1", port, "gcpdl", ())
    clock = [0.0]
    d = Deadline(3, clock=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    notes: list[str] = []
    with pytest.raises(SshError) as e:
        connect(target, d, report=notes.append)
    assert e.value.message == f"Could not connect to VM box over SSH at 127.0.0.1:{port} within 3s (connection refused (sshd not up yet))."
    assert notes == ["Waiting for SSH on box (connection refused (sshd not up yet))..."]
