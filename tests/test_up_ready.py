"""`up` ends by following the startup script, waiting for SSH and Jupyter, and writing the ssh
config: proven with the fake Compute server, the real sshd and the real jupyter server."""

from __future__ import annotations

from click.testing import CliRunner

from gcpdl.cli.app import cli
from gcpdl.ssh.sshconfig import has_host, managed_path


def test_up_on_a_running_vm_waits_for_ssh_and_jupyter(ssh_vm, monkeypatch):
    monkeypatch.setenv("GCPDL_MY_IP", "203.0.113.7")
    ssh_vm.gcp.set_guest_attributes(ssh_vm.zone, "box", "gcpdl", {"stage": "ready"})
    result = CliRunner().invoke(cli, ["up", "box", "--yes", "--zone", "us-central1-a"])
    assert result.exit_code == 0, result.output
    assert "ssh box" in result.output
    assert "gcpdl jupyter box" in result.output
    assert has_host("box")
    assert "HostName 127.0.0.1" in managed_path().read_text()


def test_up_reports_the_startup_scripts_failure(ssh_vm, monkeypatch):
    monkeypatch.setenv("GCPDL_MY_IP", "203.0.113.7")
    ssh_vm.gcp.set_guest_attributes(ssh_vm.zone, "box", "gcpdl", {"stage": "driver", "error": "nvidia-smi failed after 600s"})
    result = CliRunner().invoke(cli, ["up", "box", "--yes", "--zone", "us-central1-a"])
    assert result.exit_code == 1
    assert "Error: Setting up VM box failed: nvidia-smi failed after 600s" in result.output


def test_status_refreshes_the_ssh_config_entry(ssh_vm):
    assert not has_host("box")
    result = CliRunner().invoke(cli, ["status", "--json"])
    assert result.exit_code == 0, result.output
    assert has_host("box")


def test_after_status_plain_ssh_works_on_a_vm_this_laptop_never_reached(ssh_vm, isolated_env):
    """A VM made on another laptop: `status` writes its Host block AND pins the host keys the VM
    published, so `ssh box` (StrictHostKeyChecking yes) works without gcpdl connecting first."""
    import subprocess

    result = CliRunner().invoke(cli, ["status", "--json"])
    assert result.exit_code == 0, result.output
    r = subprocess.run(["ssh", "-F", str(isolated_env / ".ssh" / "config"), "-o", "BatchMode=yes", "box", "echo", "hi"],
                       capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr
