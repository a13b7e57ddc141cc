"""`gcpdl ssh` end to end: fake Compute (lookup + host-key guest attributes) and the real sshd."""

from __future__ import annotations

import os
import subprocess
import sys


from gcpdl.ssh import hostkeys, sshconfig

from tests.helpers import run


def test_command_output_and_exit_code(ssh_vm):
    r = run("ssh", "box", "--", "echo out; echo err >&2; exit 7")
    assert r.exit_code == 7, r.output
    assert r.stdout == "out\n"
    assert r.stderr == "err\n"
    # the host keys came from the guest attributes and were pinned under the instance id
    assert {k.type for k in hostkeys.read_known(f"gcpdl-{ssh_vm.instance_id}")} == set(ssh_vm.sshd.host_public_keys)
    # and `ssh box` now works too
    assert sshconfig.has_host("box")


def test_not_running_says_how_to_start(ssh_vm):
    ssh_vm.gcp.add_instance("sleepy", zone="us-central1-a", status="TERMINATED")
    r = run("ssh", "sleepy", "--", "true")
    assert r.exit_code == 1
    assert r.stderr == "Error: VM sleepy is stopped, not running. Start it with: gcpdl start sleepy\n"


def test_unknown_vm(ssh_vm):
    r = run("ssh", "nope", "--", "true")
    assert r.exit_code == 1
    assert r.stderr == "Error: No VM named nope in project test-project. See your VMs with: gcpdl status\n"


def test_bad_name_is_rejected_before_any_api_call(ssh_vm):
    r = run("ssh", "Bad_Name", "--", "true")
    assert r.exit_code == 2
    assert r.stderr.startswith("Error: 'Bad_Name' is not a valid VM name")
    assert ssh_vm.gcp.requests == []  # validated before the first API call


def test_host_key_changed_is_refused(ssh_vm):
    hostkeys.store(f"gcpdl-{ssh_vm.instance_id}", [hostkeys.HostKey("ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIDQ5w7oNyQm0Zx2m1b1ZKZtJp0mC5hH0yTQp4QGJ2x6a")])
    ssh_vm.gcp.guest_attrs[(ssh_vm.zone, "box")].pop("hostkeys")  # nothing published: known_hosts decides
    r = run("ssh", "box", "--", "true")
    assert r.exit_code == 1
    assert r.stderr.startswith("Error: The host key of VM box changed: it presented ")
    assert f"reset it with: ssh-keygen -R gcpdl-{ssh_vm.instance_id} -f " in r.stderr
    assert r.stderr.count("\n") == 1


def test_key_missing_on_vm(ssh_vm, tmp_path, monkeypatch):
    monkeypatch.setenv("GCPDL_CONFIG_DIR", str(tmp_path / "other"))  # a fresh key the VM never saw
    r = run("ssh", "box", "--", "true")
    assert r.exit_code == 1
    assert r.stderr.startswith(f"Error: VM box refused gcpdl's SSH key for user {ssh_vm.sshd.user}. ")


def test_interactive_hands_over_to_system_ssh(ssh_vm, isolated_env):
    """No command: gcpdl execs the system ssh with the managed config; its shell reads stdin."""
    env = dict(os.environ)
    r = subprocess.run(
        [sys.executable, "-m", "gcpdl", "ssh", "box"],
        input="echo interactive-ok; exit 5\n", capture_output=True, text=True, env=env, timeout=60,
    )
    assert r.returncode == 5, r.stderr
    assert "interactive-ok" in r.stdout


def test_ssh_does_not_import_the_compute_library(ssh_vm):
    """`gcpdl ssh` reads the instance through the lean REST session: no 1.5 s compute_v1 import."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from gcpdl.cli.app import cli\n"
        "r = CliRunner().invoke(cli, ['ssh', 'box', '--', 'true'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in sys.modules if m.startswith('google.cloud')))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ), timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
