"""`up --dry-run`: the plan, with no credentials and no network."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from gcpdl.cli.app import cli


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("GCPDL_PROJECT", "demo-project")
    monkeypatch.setenv("GCPDL_ZONE", "us-central1-a")
    monkeypatch.setenv("GCPDL_MY_IP", "203.0.113.7")


def _plan(*args: str) -> dict:
    result = CliRunner().invoke(cli, ["up", "box", *args, "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_dry_run_json_lists_exact_requests(env):
    plan = _plan("--gpu", "t4", "--spot", "--data-disk", "200", "--max-hours", "5", "--autostop", "30m")
    assert [(r["method"], r["path"]) for r in plan["requests"]] == [
        ("POST", "/compute/v1/projects/demo-project/global/firewalls"),
        ("POST", "/compute/v1/projects/demo-project/global/firewalls"),
        ("POST", "/compute/v1/projects/demo-project/zones/us-central1-a/disks"),
        ("POST", "/compute/v1/projects/demo-project/zones/us-central1-a/instances"),
    ]
    fw, deny, disk, inst = (r["body"] for r in plan["requests"])
    assert deny["denied"] == [{"IPProtocol": "tcp", "ports": ["22"]}] and deny["sourceRanges"] == ["0.0.0.0/0"]
    assert deny["targetTags"] == ["gcpdl-box"] and fw["priority"] < deny["priority"] < 65534
    assert fw["sourceRanges"] == ["203.0.113.7/32"]
    assert fw["allowed"] == [{"IPProtocol": "tcp", "ports": ["22"]}]
    assert fw["targetTags"] == inst["tags"]["items"] == ["gcpdl-box"]
    assert disk == {
        "name": "box-data",
        "sizeGb": "200",
        "type": "projects/demo-project/zones/us-central1-a/diskTypes/pd-balanced",
        "labels": {"gcpdl": "managed", "gcpdl-vm": "box"},
    }
    assert inst["machineType"] == "projects/demo-project/zones/us-central1-a/machineTypes/n1-standard-8"
    assert inst["guestAccelerators"] == [
        {"acceleratorType": "projects/demo-project/zones/us-central1-a/acceleratorTypes/nvidia-tesla-t4", "acceleratorCount": 1}
    ]
    assert inst["scheduling"] == {
        "onHostMaintenance": "TERMINATE",
        "automaticRestart": False,
        "provisioningModel": "SPOT",
        "instanceTerminationAction": "STOP",
        "maxRunDuration": {"seconds": "18000"},
    }
    assert inst["labels"] == {"gcpdl": "managed", "gcpdl-gpu": "t4", "gcpdl-gpu-count": "1", "gcpdl-spot": "true"}
    meta = {i["key"]: i["value"] for i in inst["metadata"]["items"]}
    assert meta["install-nvidia-driver"] == "True"
    assert meta["enable-guest-attributes"] == "TRUE"
    assert meta["gcpdl-autostop"] == "30"
    assert meta["ssh-keys"].startswith("gcpdl:ssh-ed25519 ")
    assert meta["gcpdl-runlog"].startswith("start ")
    assert meta["startup-script"]
    boot, data = inst["disks"]
    assert boot["initializeParams"]["diskSizeGb"] == "100"
    assert boot["initializeParams"]["sourceImage"] == (
        "projects/deeplearning-platform-release/global/images/family/pytorch-2-7-cu128-ubuntu-2204-nvidia-570"
    )
    assert data == {"boot": False, "autoDelete": False, "deviceName": "data", "type": "PERSISTENT",
                    "mode": "READ_WRITE", "source": "projects/demo-project/zones/us-central1-a/disks/box-data"}
    assert inst["serviceAccounts"] == [{"email": "default", "scopes": ["https://www.googleapis.com/auth/devstorage.read_only"]}]
    assert plan["price_per_hour"] > 0


def test_builtin_gpu_has_no_guest_accelerators_and_cpu_only_no_driver(env):
    inst = _plan("--gpu", "a100:2")["requests"][-1]["body"]
    assert "guestAccelerators" not in inst
    assert inst["machineType"].endswith("/a2-highgpu-2g")
    assert inst["scheduling"] == {"onHostMaintenance": "TERMINATE", "automaticRestart": True}
    cpu = _plan("--cpu-only")["requests"][-1]["body"]
    assert "scheduling" not in cpu
    assert "install-nvidia-driver" not in {i["key"] for i in cpu["metadata"]["items"]}
    assert cpu["labels"]["gcpdl-gpu"] == "none"


def test_dry_run_human_plan_goes_to_stdout(env):
    result = CliRunner().invoke(cli, ["up", "box", "--gpu", "l4", "--dry-run"])
    assert result.exit_code == 0
    assert "Plan for box in us-central1-a (project demo-project), nothing created:" in result.stdout
    assert "POST /compute/v1/projects/demo-project/zones/us-central1-a/instances" in result.stdout


def test_dry_run_without_project_or_zone_says_so(monkeypatch):
    monkeypatch.setenv("GCPDL_ZONE", "us-central1-a")
    result = CliRunner().invoke(cli, ["up", "box", "--gpu", "t4", "--dry-run"])
    assert result.exit_code == 2
    assert result.stderr == (
        "Error: No Google Cloud project set (a dry run looks nothing up). "
        "Pass --project, set GCPDL_PROJECT, or run: gcpdl config set project PROJECT_ID\n"
    )
    monkeypatch.delenv("GCPDL_ZONE")
    result = CliRunner().invoke(cli, ["up", "box", "--gpu", "t4", "--dry-run", "--project", "my-project"])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: No zone set. Pass --zone")


def test_open_to_world_only_when_explicit_with_warning(env):
    result = CliRunner().invoke(cli, ["up", "box", "--gpu", "t4", "--ssh-from", "0.0.0.0/0", "--dry-run", "--json"])
    assert result.exit_code == 0
    assert "Warning: SSH will be open to the whole internet (0.0.0.0/0)" in result.stderr
    assert json.loads(result.stdout)["requests"][0]["body"]["sourceRanges"] == ["0.0.0.0/0"]


@pytest.mark.parametrize(
    "args, line",
    [
        (["up", "Bad_Name", "--gpu", "t4"], "Error: Invalid VM name 'Bad_Name': use 1-63 lowercase letters, digits or hyphens, starting with a letter and not ending with a hyphen."),
        (["up", "box", "--gpu", "k80"], "Error: Unknown GPU 'k80'. Choose one of: t4, p4, p100, v100, l4, a100, a100-80gb, h100."),
        (["up", "box", "--gpu", "t4", "--zone", "central"], "Error: Invalid zone 'central': expected a zone like us-central1-a."),
    ],
)
def test_bad_input_one_line_no_traceback(env, args, line):
    result = CliRunner().invoke(cli, args + ["--dry-run"])
    assert result.exit_code == 2
    assert result.stderr == line + "\n"
    assert result.stdout == ""


def test_dry_run_needs_no_credentials_and_no_compute_import(tmp_path):
    code = (
        "import sys\n"
        "from gcpdl.cli.app import cli\n"
        "try:\n    cli(['up', 'box', '--gpu', 't4', '--dry-run', '--json'])\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "heavy = [m for m in ('google.cloud.compute_v1', 'google.auth.transport.requests', 'requests') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("GOOGLE_", "CLOUDSDK_"))}
    env.update(GCPDL_PROJECT="demo-project", GCPDL_ZONE="us-central1-a", GCPDL_MY_IP="203.0.113.7")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stderr
    assert json.loads(out.stdout)["requests"][0]["body"]["sourceRanges"] == ["203.0.113.7/32"]


@pytest.mark.parametrize("gpu", ["t4", "p4:2", "p100", "v100:8", "l4:4", "a100:16", "a100-80gb:2", "h100:8", None])
def test_every_plan_is_a_valid_request_shape(env, fake_compute, gpu):
    """Each planned request routes and validates against the Compute v1 discovery document."""
    args = ["--gpu", gpu] if gpu else ["--cpu-only"]
    plan = _plan(*args, "--spot", "--data-disk", "50", "--max-hours", "1")
    for request in plan["requests"]:
        assert fake_compute.check(request["method"], request["path"], request["body"]) is None, request["path"]
