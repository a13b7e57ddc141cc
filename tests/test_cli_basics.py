"""The CLI shell: help for every command, version, config resolution order."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from gcpdl.cli.app import COMMANDS, cli


def test_every_command_has_help():
    runner = CliRunner()
    for name in COMMANDS:
        cmd = cli.get_command(None, name)
        if cmd is None:
            continue  # not built yet
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, result.output
        assert (cmd.help or "").strip(), f"{name} has no help text"


def test_help_does_not_import_google_libraries():
    code = (
        "import sys; from gcpdl.cli.app import cli\n"
        "try:\n    cli(['--help'])\nexcept SystemExit: pass\n"
        "heavy = [m for m in ('google.cloud.compute_v1', 'google.cloud.storage', 'paramiko', 'google.auth') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out


def test_python_dash_m_runs():
    out = subprocess.run([sys.executable, "-m", "gcpdl", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "gcpdl" in out.stdout


def test_config_resolution_order(monkeypatch, isolated_env):
    from gcpdl import settings

    settings.write_config_value("project", "from-config")
    settings.write_config_value("zone", "europe-west4-a")
    gcloud = isolated_env / ".config" / "gcloud"
    (gcloud / "configurations").mkdir(parents=True)
    (gcloud / "active_config").write_text("work")
    (gcloud / "configurations" / "config_work").write_text("[core]\nproject = from-gcloud\n[compute]\nzone = asia-east1-a\n")
    s = settings.resolve()
    assert (s.project, s.sources["project"]) == ("from-config", "config")
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "from-google-env")
    monkeypatch.setenv("CLOUDSDK_CORE_PROJECT", "from-cloudsdk")
    assert settings.resolve().project == "from-cloudsdk"
    monkeypatch.setenv("GCPDL_PROJECT", "from-gcpdl-env")
    assert settings.resolve().project == "from-gcpdl-env"
    assert settings.resolve(flags={"project": "from-flag"}).project == "from-flag"
    (isolated_env / ".config" / "gcpdl" / "config.toml").unlink()
    s = settings.resolve(env={})
    assert (s.project, s.zone) == ("from-gcloud", "asia-east1-a")


def test_config_set_rejects_unknown_key():
    result = CliRunner().invoke(cli, ["config", "set", "colour", "blue"])
    assert result.exit_code == 2
    assert result.output.startswith("Error: Unknown config key 'colour'.")


def test_jupyter_fixture_answers(jupyter_server):
    assert jupyter_server.api("GET", "/api/status")["kernels"] == 0


def test_config_set_rejects_a_non_number():
    result = CliRunner().invoke(cli, ["config", "set", "credits", "abc"])
    assert result.exit_code == 2
    assert result.output == "Error: Invalid credits 'abc': expected a number.\n"
