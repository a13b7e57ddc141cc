"""Issue 9 item 4: everything gcpdl writes locally is private whatever the umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.helpers import run


@pytest.fixture
def umask_000():
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


def test_config_set_under_umask_000_makes_a_private_folder_and_file(umask_000, isolated_env: Path):
    result = run("config", "set", "zone", "us-central1-b")
    assert result.exit_code == 0, result.output
    folder = isolated_env / ".config" / "gcpdl"
    assert mode(folder) == 0o700
    assert mode(folder / "config.toml") == 0o600
    assert [p.name for p in folder.iterdir()] == ["config.toml"]  # no temporary file left


def test_keys_known_hosts_and_ssh_config_under_umask_000(umask_000, isolated_env: Path):
    from gcpdl.ssh.hostkeys import HostKey, known_hosts_path, store
    from gcpdl.ssh.keys import ensure_keypair, key_dir
    from gcpdl.ssh.sshconfig import managed_path, refresh_host, ssh_dir, user_config_path

    pair = ensure_keypair()
    assert mode(key_dir()) == 0o700
    assert mode(pair.private_path) == 0o600
    assert mode(pair.private_path.with_suffix(".pub")) == 0o644  # public, but never world-writable
    store("gcpdl-1", [HostKey("ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl")])
    assert mode(known_hosts_path()) == 0o600
    refresh_host("box", "127.0.0.1", "1")
    assert mode(ssh_dir()) == 0o700
    assert mode(managed_path()) == 0o600
    assert mode(user_config_path()) == 0o600


def test_private_dir_fixes_an_existing_gcpdl_folder(isolated_env: Path):
    from gcpdl.files import private_dir, write_private

    folder = isolated_env / ".config" / "gcpdl"
    folder.mkdir(parents=True)
    os.chmod(folder, 0o777)
    write_private(folder / "x", "1")
    private_dir(folder)
    assert mode(folder) == 0o700


def test_write_private_never_follows_a_planted_temporary_link(isolated_env: Path):
    from gcpdl.files import write_private

    victim = isolated_env / "victim"
    victim.write_text("keep")
    target = isolated_env / "f"
    write_private(target, "new")
    assert target.read_text() == "new" and victim.read_text() == "keep"
    assert mode(target) == 0o600
