"""Help and error output that fit (issue 10 §6): workflow order, one uncut line per command,
no-argument help, "Did you mean", -v anywhere, problem and fix on separate lines wrapped at 80
columns on a terminal, "n" at the price prompt is not an error."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest
from click.testing import CliRunner

from gcpdl.cli.app import COMMANDS, SHORT_HELP, cli
from tests.helpers import run

WORKFLOW = ["up", "status", "ssh", "jupyter", "sync", "run", "ray", "stop", "start", "down", "autostop", "cost", "doctor", "config"]


def _commands_section(text: str) -> list[str]:
    return text.split("Commands:\n", 1)[1].splitlines()


def test_no_arguments_prints_help_and_exits_0():
    result = CliRunner().invoke(cli, [])
    assert result.exit_code == 0
    assert result.stdout.startswith("Usage: ")  # `gcpdl` for users; CliRunner names it after the function
    assert "gcpdl doctor" in result.stdout.split("Options:")[0]  # doctor is the first thing to run


def test_commands_listed_in_workflow_order_one_uncut_line_each():
    out = CliRunner().invoke(cli, ["--help"]).stdout
    rows = _commands_section(out)
    assert [r.split()[0] for r in rows] == WORKFLOW == list(COMMANDS)
    for row, name in zip(rows, WORKFLOW):
        assert row.rstrip().endswith(SHORT_HELP[name])
        assert "..." not in row and len(row) <= 80


def test_every_help_fits_80_columns_and_shows_defaults_one_way():
    runner = CliRunner()
    for name in COMMANDS:
        out = runner.invoke(cli, [name, "--help"], terminal_width=80).stdout
        assert "[default:" not in out, name  # defaults read "(default: X)" in the text
        assert all(len(line) <= 80 for line in out.splitlines()), name


def test_typo_gets_did_you_mean():
    result = CliRunner().invoke(cli, ["stauts"])
    assert result.exit_code == 2
    assert "No such command 'stauts'." in result.stderr and "'status'" in result.stderr
    result = CliRunner().invoke(cli, ["jupyer"])
    assert "Did you mean 'jupyter'?" in result.stderr


def test_verbose_after_the_subcommand(env):
    result = run("up", "box", "--gpu", "t4", "--yes", "-v")
    assert result.exit_code == 0, result.output
    assert "Compute API requests." in result.stderr
    assert CliRunner().invoke(cli, ["config", "show", "-v"]).exit_code == 0


@pytest.mark.parametrize("value,hours", [("2h", 2.0), ("90m", 1.5), ("1.5", 1.5), ("3", 3.0)])
def test_max_hours_takes_durations_like_autostop(value, hours):
    result = CliRunner().invoke(cli, ["up", "box", "--project", "my-project", "--zone", "us-central1-a", "--dry-run", "--json",
                                      "--max-hours", value])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["max_hours"] == hours


@pytest.mark.parametrize("value", ["-1", "-30m", "nan"])
def test_max_hours_out_of_range_is_the_range_error(value):
    """Numbers (and durations) out of range reach gcpdl.spec's range check, as a plain float did."""
    result = CliRunner().invoke(cli, ["up", "box", "--project", "my-project", "--zone", "us-central1-a", "--dry-run", "--max-hours", value])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: Invalid --max-hours ") and "expected hours like" not in result.stderr


def test_max_hours_nonsense_is_one_error_line():
    result = CliRunner().invoke(cli, ["up", "box", "--project", "my-project", "--zone", "us-central1-a", "--dry-run", "--max-hours", "soon"])
    assert result.exit_code == 2
    assert result.stderr == "Error: Invalid --max-hours 'soon': expected hours like 2h or 1.5, or minutes like 90m.\n"


def test_error_off_a_terminal_stays_one_line(gcp):
    gcp.disable_api()
    result = run("status")
    assert result.exit_code == 1
    assert result.stderr == ("Error: The Compute Engine API (compute.googleapis.com) is not enabled in project test-project. "
                             "Run: gcloud services enable compute.googleapis.com --project test-project\n")


def test_no_at_the_price_prompt_is_nothing_created_exit_0(env, monkeypatch):
    monkeypatch.setenv("GCPDL_CONFIRM_ABOVE", "0.01")
    result = run("up", "box", "--gpu", "t4", input="n\n")
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[-1] == "Nothing created."
    assert "Error" not in result.stderr
    assert env.instances() == [] and env.firewalls() == []


def _run_in_pty(args: list[str], columns: int, env: dict[str, str]) -> tuple[int, str]:
    """Run `python -m gcpdl ARGS` with stdout and stderr on a pseudo-terminal of ``columns``."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([sys.executable, "-m", "gcpdl", *args], stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            env=env, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode().replace("\r\n", "\n")


def test_on_a_terminal_problem_fix_and_doctor_on_separate_lines(gcp):
    gcp.disable_api()
    rc, out = _run_in_pty(["status"], 200, dict(os.environ))
    assert rc == 1
    # wrapped at 80 even on a wide terminal; a continuation line is indented, a new part is not
    parts: list[str] = []
    for line in out.strip("\n").splitlines():
        if line.startswith(" "):
            parts[-1] += " " + line.strip()
        else:
            parts.append(line)
    assert parts == [
        "Error: The Compute Engine API (compute.googleapis.com) is not enabled in project test-project.",
        "Run: gcloud services enable compute.googleapis.com --project test-project",
        "Or let gcpdl enable it: gcpdl doctor --fix",
    ]


def test_credentials_error_points_at_doctor_on_a_terminal(monkeypatch):
    monkeypatch.setenv("GCPDL_PROJECT", "my-project")
    rc, out = _run_in_pty(["status"], 120, dict(os.environ))
    assert rc == 1
    lines = out.strip("\n").splitlines()
    assert lines[0].startswith("Error: No Google credentials found")
    assert lines[-1] == "Check the whole setup at once: gcpdl doctor"


@pytest.mark.parametrize("columns", [80, 50])
def test_errors_wrap_cleanly_on_a_terminal(gcp, columns):
    gcp.disable_api()
    rc, out = _run_in_pty(["status"], columns, dict(os.environ))
    assert rc == 1
    lines = out.strip("\n").splitlines()
    assert lines[0].startswith("Error: The Compute Engine API")
    assert all(len(line) <= columns for line in lines), lines
    # nothing lost, nothing cut mid-word: the words come back exactly, fix after problem
    assert " ".join(" ".join(lines).split()) == (
        "Error: The Compute Engine API (compute.googleapis.com) is not enabled in project test-project. "
        "Run: gcloud services enable compute.googleapis.com --project test-project "
        "Or let gcpdl enable it: gcpdl doctor --fix")
    assert lines[1].startswith("       ")  # the problem's own continuation lines are indented under it


def test_old_python_gets_one_line():
    code = "import sys; sys.version_info = (3, 9, 18); import gcpdl"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("gcpdl needs Python 3.10 or newer; this is Python 3.9.")
    # and the file still parses with an old grammar
    import ast

    import gcpdl

    ast.parse(open(gcpdl.__file__).read(), feature_version=(3, 4))


def _complete(words: str, env: dict[str, str]) -> list[str]:
    """What bash completion offers after `gcpdl WORDS` (click's bash_complete protocol)."""
    parts = words.split(" ")
    env = {**env, "COMP_WORDS": f"gcpdl {words}", "COMP_CWORD": str(len(parts)), "_GCPDL_COMPLETE": "bash_complete"}
    out = subprocess.run([sys.executable, "-m", "gcpdl"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    return [line.split(",", 1)[1] for line in out.stdout.splitlines()]


def test_completion_offers_cached_vm_names_and_gpus(isolated_env):
    from types import SimpleNamespace

    from gcpdl.compute.lookup import VmCache

    VmCache().remember("proj-one", [SimpleNamespace(name="box", zone="us-central1-a", instance_id="1"),
                              SimpleNamespace(name="lab", zone="us-east1-c", instance_id="2")])
    VmCache().remember("proj-two", [SimpleNamespace(name="other", zone="us-east1-c", instance_id="3")])
    env = {**os.environ, "GCPDL_PROJECT": "proj-one"}
    assert _complete("ssh ", env) == ["box", "lab"]  # only the configured project's VMs
    assert _complete("down l", env) == ["lab"]
    assert _complete("sync gs://b/d --on ", env) == ["box", "lab"]
    assert _complete("up box --gpu a", env) == ["a100", "a100-80gb"]
    assert _complete("stat", env) == ["status"]
    source = subprocess.run([sys.executable, "-m", "gcpdl"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "_GCPDL_COMPLETE": "bash_source"})
    assert "_gcpdl_completion" in source.stdout  # what the README tells people to eval
