"""Fix hints work for the user who reads them: an OS Login user with only roles/compute.osLogin
has no sudo (pam_oslogin_admin grants it only with osAdminLogin), so no hint may need it."""

from __future__ import annotations

import stat

from gcpdl.ssh.target import SshTarget
from tests.test_startup_template import Vm


def test_the_setup_log_hint_needs_no_sudo():
    from gcpdl.ssh.ready import startup_log_command

    assert startup_log_command("box") == "gcpdl ssh box -- cat /var/log/gcpdl/startup.log"
    assert startup_log_command("box", lines=100) == "gcpdl ssh box -- tail -n 100 /var/log/gcpdl/startup.log"


def test_jupyter_restart_hint_under_os_login_needs_no_sudo():
    from gcpdl.jupyter import restart_hint

    plain = SshTarget("box", "us-central1-a", "1", "RUNNING", "203.0.113.9")
    assert restart_hint(plain) == "Restart it with: gcpdl ssh box -- sudo systemctl restart gcpdl-jupyter.service"
    hint = restart_hint(SshTarget("box", "us-central1-a", "1", "RUNNING", "203.0.113.9", user="ada_example_com", oslogin=True))
    assert hint.startswith("Restart the VM (its startup script starts Jupyter again): gcpdl stop box, then gcpdl start box.")
    assert "roles/compute.osAdminLogin" in hint  # sudo, only for those who have it


def test_the_startup_script_keeps_a_world_readable_copy_of_its_log():
    vm = Vm()
    try:
        script = vm.script()
        r = vm.run(script, 'ensure_token; log "stage: driver"; log "ready"')
        assert r.returncode == 0, r.stdout + r.stderr
        copy = vm.root / "var-log-gcpdl" / "startup.log"
        lines = copy.read_text().splitlines()
        assert [line.split(" ", 1)[1] for line in lines] == ["gcpdl: stage: driver", "gcpdl: ready"]
        assert lines[0].split(" ", 1)[0].endswith("Z")  # a UTC time first
        assert stat.S_IMODE(copy.stat().st_mode) == 0o644 and stat.S_IMODE(copy.parent.stat().st_mode) == 0o755
        token = (vm.root / "etc-gcpdl" / "jupyter.env").read_text().split("=", 1)[1].strip()
        assert token not in copy.read_text()
    finally:
        vm.close()


def test_readme_commands_table_is_in_the_order_of_gcpdl_help():
    """One order a learner meets everywhere: `gcpdl --help` and the README's Commands table."""
    import re
    from pathlib import Path

    from click.testing import CliRunner

    from gcpdl.cli.app import cli

    help_text = CliRunner().invoke(cli, ["--help"]).stdout
    listed = help_text.split("Commands:\n", 1)[1].splitlines()
    in_help = [line.split()[0] for line in listed if line.startswith("  ") and line.strip()]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme.split("## Commands\n", 1)[1].strip().split("\n\n", 1)[0]
    in_readme = [re.match(r"\| `gcpdl (\w+)", row).group(1) for row in table.splitlines()[2:]]
    assert in_readme == in_help
