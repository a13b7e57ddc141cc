import stat

from gcpdl.ssh.keys import ensure_keypair


def test_keypair_created_once_with_0600(tmp_path):
    kp = ensure_keypair(tmp_path / "ssh")
    assert stat.S_IMODE(kp.private_path.stat().st_mode) == 0o600
    assert kp.public_line.startswith("ssh-ed25519 ")
    assert kp.metadata_entry().startswith("gcpdl:ssh-ed25519 ")
    again = ensure_keypair(tmp_path / "ssh")
    assert again.public_line == kp.public_line


def test_startup_renders():
    from gcpdl.startup import StartupOptions, render_startup_script

    assert render_startup_script(StartupOptions()).startswith("#!/bin/bash")
