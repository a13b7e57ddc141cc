"""The managed ssh config include: user's lines untouched, one block per VM, and the system
`ssh` client really logs in with it (host-key checking on)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from gcpdl.errors import InvalidInput
from gcpdl.ssh import hostkeys, sshconfig
from gcpdl.ssh.hostkeys import HostKey
from gcpdl.ssh.keys import ensure_keypair

USER_CONFIG = "Host *\n    ServerAliveInterval 60\n\nHost work\n  HostName 10.0.0.1   # mine\n"


def test_include_added_once_at_top_and_user_lines_kept(isolated_env: Path):
    cfg = isolated_env / ".ssh" / "config"
    cfg.parent.mkdir()
    cfg.write_text(USER_CONFIG)
    os.chmod(cfg, 0o644)
    sshconfig.refresh_host("box", "203.0.113.7", 111)
    sshconfig.refresh_host("box", "203.0.113.8", 111)
    sshconfig.refresh_host("other", "203.0.113.9", 222, port=2222)
    text = cfg.read_text()
    include = f'Include "{isolated_env}/.ssh/gcpdl_config"\n'
    assert text == f"{sshconfig.INCLUDE_COMMENT}\n{include}\n{USER_CONFIG}"
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o644  # the user's mode is kept


def test_blocks_refreshed_and_removed(isolated_env: Path):
    sshconfig.refresh_host("box", "203.0.113.7", 111)
    sshconfig.refresh_host("other", "203.0.113.9", 222, port=2222)
    sshconfig.refresh_host("box", "203.0.113.8", 333)  # stop/start: new IP; rebuild: new id
    managed = sshconfig.managed_path().read_text()
    assert managed.count("Host box\n") == 1
    assert "HostName 203.0.113.8" in managed and "203.0.113.7" not in managed
    assert "HostKeyAlias gcpdl-333" in managed
    assert "    Port 2222\n" in managed and managed.count("Port ") == 1  # no Port line for 22
    assert stat.S_IMODE(sshconfig.managed_path().stat().st_mode) == 0o600
    assert sshconfig.remove_host("box") is True
    assert sshconfig.remove_host("box") is False
    managed = sshconfig.managed_path().read_text()
    assert "Host box" not in managed and "Host other\n" in managed
    assert managed.startswith(sshconfig.HEADER)


def test_bad_name_or_ip_rejected_and_nothing_written(isolated_env: Path):
    with pytest.raises(InvalidInput):
        sshconfig.refresh_host("Box\n  ProxyCommand evil", "203.0.113.7", 1)
    with pytest.raises(InvalidInput):
        sshconfig.refresh_host("box", "203.0.113.7 -oProxyCommand=x", 1)
    assert not (isolated_env / ".ssh").exists()


def _ssh(isolated_env: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", "-F", str(isolated_env / ".ssh" / "config"), "-o", "BatchMode=yes", *args],
        capture_output=True, text=True, timeout=30,
    )


def test_system_ssh_logs_in_through_the_include(isolated_env: Path, sshd):
    kp = ensure_keypair()
    sshd.authorize(kp.public_line)
    hostkeys.store("gcpdl-555", [HostKey(t, b) for t, b in sshd.host_public_keys.items()])
    sshconfig.refresh_host("box", "127.0.0.1", 555, user=sshd.user, port=sshd.port)
    r = _ssh(isolated_env, "box", "echo", "hello-from-box")
    assert (r.returncode, r.stdout) == (0, "hello-from-box\n"), r.stderr
    # scp (and so rsync -e ssh, VS Code Remote-SSH) read the same config
    src, dst = isolated_env / "notes.txt", isolated_env / "copied.txt"
    src.write_text("over scp\n")
    r = subprocess.run(["scp", "-F", str(isolated_env / ".ssh" / "config"), "-o", "BatchMode=yes", "-q", str(src), f"box:{dst}"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and dst.read_text() == "over scp\n", r.stderr


def test_system_ssh_refuses_a_wrong_host_key(isolated_env: Path, sshd):
    kp = ensure_keypair()
    sshd.authorize(kp.public_line)
    hostkeys.store("gcpdl-556", [HostKey("ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIDQ5w7oNyQm0Zx2m1b1ZKZtJp0mC5hH0yTQp4QGJ2x6a")])
    sshconfig.refresh_host("box", "127.0.0.1", 556, user=sshd.user, port=sshd.port)
    r = _ssh(isolated_env, "box", "true")
    assert r.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in r.stderr or "Host key verification failed" in r.stderr


def test_refresh_vm_pins_guest_keys_so_plain_ssh_works_at_once(ssh_vm, isolated_env: Path):
    from gcpdl.clients import ClientFactory
    from gcpdl.settings import resolve

    ssh_vm.gcp.add_instance("cold", zone=ssh_vm.zone, status="TERMINATED")
    factory = ClientFactory(resolve())
    assert sshconfig.refresh_vm(factory, "cold") is False and not sshconfig.has_host("cold")
    assert sshconfig.refresh_vm(factory, "box") is True
    # no gcpdl connection happened: the keys come from the guest attributes
    r = _ssh(isolated_env, "box", "echo", "pinned")
    assert (r.returncode, r.stdout) == (0, "pinned\n"), r.stderr
