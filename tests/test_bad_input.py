"""Issue 9, "Bad input": one `Error:` line, a non-zero exit, no traceback, and nothing asked of
Google (the fake records every request) for every hostile value of every option and argument.
The named cases first, then a table-driven sweep of the whole CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import run

GPUS = "t4, p4, p100, v100, l4, a100, a100-80gb, h100"


def one_error_line(result, code: int | None = 2) -> str:
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not a crash
    assert result.exit_code != 0 and (code is None or result.exit_code == code), (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_empty_gpu_is_not_taken_for_t4(env):
    line = one_error_line(run("up", "box", "--gpu", "", "--dry-run"))
    assert line == f"Error: Invalid --gpu '': choose one of: {GPUS}, with an optional count (t4:2)."
    assert env.requests == []


@pytest.mark.parametrize("hours", ["0.001", "0.008", "2881", "-1", "nan", "inf"])
def test_max_hours_outside_what_compute_engine_accepts(env, hours):
    line = one_error_line(run("up", "box", "--gpu", "t4", "--max-hours", hours, "--dry-run"))
    assert line == (f"Error: Invalid --max-hours {float(hours):g}: Compute Engine accepts a run time from 30 seconds "
                    "(0.0084 hours) to 120 days (2880 hours).")


def test_max_hours_at_the_lower_bound_sends_at_least_30_seconds(env):
    result = run("up", "box", "--gpu", "t4", "--max-hours", str(30 / 3600), "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    insert = [r for r in json.loads(result.stdout)["requests"] if r["path"].endswith("/instances")][0]
    assert int(insert["body"]["scheduling"]["maxRunDuration"]["seconds"]) == 30


def test_bad_project_id_is_refused_before_planning(env):
    result = run("up", "box", "--gpu", "t4", "--project", "Bad Project", "--dry-run")
    assert one_error_line(result) == ("Error: Invalid project 'Bad Project': expected a project id like my-project-123 "
                                      "(6-30 lowercase letters, digits or hyphens, starting with a letter).")
    assert result.stdout == ""


def test_negative_window_is_an_error_about_the_value(env):
    line = one_error_line(run("autostop", "box", "-5"))
    assert line == "Error: Invalid WINDOW '-5': expected minutes like 60m, hours like 2h, or off."
    assert env.requests == []


def test_credentials_variable_pointing_at_a_folder(gcp, monkeypatch, tmp_path: Path):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path))
    line = one_error_line(run("status"), code=1)
    assert line == (f"Error: GOOGLE_APPLICATION_CREDENTIALS points at {tmp_path}, a folder, not a credentials file. "
                    "Point it at a JSON key file, or unset it to use your gcloud login.")
    assert gcp.requests == []


@pytest.mark.parametrize(
    "content, why",
    [
        ("{not json", "it is not valid JSON."),
        ('{"type": "service_account", "client_email": "a@b.c", "token_uri": "x"}',
         "The private_key field was not found in the service account info."),
    ],
)
def test_malformed_credentials_file_names_the_file_and_the_variable(gcp, monkeypatch, tmp_path: Path, content, why):
    bad = tmp_path / "key.json"
    bad.write_text(content)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(bad))
    line = one_error_line(run("status"), code=1)
    assert line == (f"Error: The credentials file {bad} (named by GOOGLE_APPLICATION_CREDENTIALS) cannot be used: {why} "
                    "Fix it, point GOOGLE_APPLICATION_CREDENTIALS at a valid key file, or unset it to use your gcloud login.")
    assert "gcloud auth application-default login" not in line and "(" + "'" not in line


def asked_then_refused(result, question: str) -> None:
    """The question, then one `Error:` line of its own (not click's bare "Aborted!")."""
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert result.stderr.splitlines()[-2:] == [question, "Error: no terminal to confirm: pass --yes"], result.stderr
    assert result.stderr.count("Error:") == 1 and "Aborted" not in result.output


def test_confirmation_without_a_terminal_says_pass_yes(env, monkeypatch):
    monkeypatch.setenv("GCPDL_CONFIRM_ABOVE", "0")
    result = run("up", "box", "--gpu", "t4")
    asked_then_refused(result, "This VM costs about $0.73/h while it runs. Create it? [y/N]: ")
    assert env.calls("compute.instances.insert") == []


def test_down_without_a_terminal_says_pass_yes(env):
    env.add_instance("box", labels={"gcpdl": "managed"})
    result = run("down", "box")
    asked_then_refused(result, "Delete box in us-central1-a? This cannot be undone. [y/N]: ")
    assert env.calls("compute.instances.delete") == []
    assert env.instance("us-central1-a", "box") is not None


def test_a_typed_no_still_says_no(env):
    env.add_instance("box", labels={"gcpdl": "managed"})
    result = run("down", "box", input="n\n")
    assert result.exit_code != 0 and "pass --yes" not in result.output
    assert env.calls("compute.instances.delete") == []


# --- the sweep --------------------------------------------------------------------------------
NUMBERS = ["-5", "0", "nan", "inf", "-inf", "1e999", "", " ", "12abc", "5\x00"]
NAMES = ["", "-x", "Box", "a" * 64, "box\n", "box;rm", "../box"]
TEXT = ["", " ", "x\ny", "bad value", "\x1b[31m", "../../etc/passwd"]
PROJECTS = ["", "Bad Project", "p", "x\ny", "-flag", "a" * 40]
ZONES = ["", "nowhere", "us-central1", "us-central1-a\n", "US-CENTRAL1-A"]


def _cases() -> list[tuple[str, ...]]:
    cases: list[tuple[str, ...]] = []
    for v in NUMBERS:
        cases += [("up", "box", "--disk", v), ("up", "box", "--data-disk", v), ("up", "box", "--max-hours", v),
                  ("jupyter", "box", "--port", v),
                  ("up", "box", "--gpu", f"t4:{v}")]
    for v in [n for n in NUMBERS if n != "0"] + ["5s", "1e3m", "169h"]:  # 0 means off
        cases += [("up", "box", "--autostop", v), ("autostop", "box", v)]
    for v in NAMES:
        for cmd in (("up",), ("stop",), ("start",), ("down", "--yes"), ("status",), ("autostop", "30m"),
                    ("jupyter",), ("ssh", "--", "true")):
            if cmd[0] == "autostop":
                cases.append(("autostop", v, "30m"))
            elif cmd[0] == "ssh":
                cases.append(("ssh", v, "--", "true"))
            else:
                cases.append((cmd[0], v, *cmd[1:]))
    for v in TEXT:
        cases += [("up", "box", "--gpu", v), ("up", "box", "--machine", v), ("up", "box", "--disk-type", v),
                  ("up", "box", "--image-family", v), ("up", "box", "--ssh-from", v)]
    for v in ("garbage", "0.0.0.0/33", "::1", "2001:db8::/32", "1.2.3.4\n", "1.2.3.4/8/8"):
        cases.append(("up", "box", "--ssh-from", v))
    for v in PROJECTS:
        cases += [("up", "box", "--project", v), ("up", "box", "--image-project", v), ("status", "--project", v),
                  ("stop", "box", "--project", v), ("start", "box", "--project", v), ("down", "box", "--yes", "--project", v),
                  ("autostop", "box", "30m", "--project", v), ("ssh", "box", "--project", v, "--", "true"),
                  ("jupyter", "box", "--project", v)]
    for v in ZONES:
        cases += [("up", "box", "--zone", v), ("ssh", "box", "--zone", v, "--", "true"), ("jupyter", "box", "--zone", v)]
    for v in NUMBERS:
        if v != "0":  # no credits left is a fine answer
            cases.append(("cost", "--credits", v))
        cases += [("sync", "gs://bucket/x", "dest", "--local", "--jobs", v), ("sync", "gs://bucket/x", "dest", "--local", "--slice-size", v),
                  ("sync", "gs://bucket/x", "dest", "--local", "--retry-base", v)]
    for v in ("", "k80", "t4:x", "-x"):
        cases.append(("doctor", "--gpu", v))
    for v in ("", "gs://", "gs://B A D", "s3://x", "gs://b\n", "gs://../x"):
        cases.append(("sync", v, "dest", "--local"))
    for v in NAMES:
        cases.append(("sync", "gs://bucket/x", "--on", v))
    for v in PROJECTS:
        cases += [("sync", "gs://bucket/x", "dest", "--local", "--billing-project", v), ("cost", "--project", v),
                  ("doctor", "--project", v), ("sync", "gs://bucket/x", "--project", v)]
    return cases


@pytest.mark.parametrize("args", _cases(), ids=lambda a: " ".join(a).encode("unicode_escape").decode())
def test_every_hostile_value_is_one_error_line_and_no_request(env, isolated_env: Path, monkeypatch, args):
    monkeypatch.chdir(isolated_env)  # sync's DEST, were anything written
    if args[0] == "up":
        args = (*args, "--gpu", "t4") if "--gpu" not in args and "--cpu-only" not in args else args
    result = run(*args)
    one_error_line(result, code=None)
    assert env.requests == [], [r.path for r in env.requests]
    assert not (isolated_env / ".ssh").exists()
    assert not (isolated_env / "dest").exists()


@pytest.mark.parametrize(
    "args, line",
    [
        (["nosuch"], "Error: No such command 'nosuch'. (see: cli --help)"),
        (["up", "box", "--bogus"], "Error: No such option '--bogus'. Did you mean '--gpu'? (see: cli up --help)"),
        (["jupyter", "box", "--port", "0"], "Error: Invalid value for '--port': 0 is not in the range 1<=x<=65535. (see: cli jupyter --help)"),
    ],
)
def test_usage_errors_are_one_line_that_points_at_help(env, args, line):
    assert one_error_line(run(*args)) == line
