"""`gcpdl status` against the fake: every gcpdl VM across zones, via one aggregatedList."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from tests.helpers import run


@pytest.fixture
def three(gcp):
    now = datetime.now(timezone.utc)
    gcp.add_instance("alpha", zone="us-central1-a", labels={"gcpdl": "managed"}, machine_type="n1-standard-8",
                     last_start=now - timedelta(hours=2, minutes=5), nat_ip="34.1.2.3")
    gcp.add_instance("beta", zone="europe-west4-a", labels={"gcpdl": "managed", "gcpdl-gpu": "l4"}, machine_type="g2-standard-8",
                     status="TERMINATED", guest_attributes={"gcpdl": {"autostop": "idle 60 min"}})
    gcp.add_instance("gamma", zone="us-east1-c", labels={"gcpdl": "managed", "gcpdl-spot": "true"}, spot=True)
    gcp.add_instance("not-ours", zone="us-central1-b", labels={})
    gcp.preempt("us-east1-c", "gamma")
    return gcp


def test_status_json_lists_every_gcpdl_vm(three):
    result = run("status", "--json")
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert sorted(rows) == ["alpha", "beta", "gamma"]
    a, b, g = rows["alpha"], rows["beta"], rows["gamma"]
    assert (a["state"], a["zone"], a["gpu"], a["gpu_count"], a["external_ip"]) == ("RUNNING", "us-central1-a", "t4", 1, "34.1.2.3")
    assert 2 * 3600 <= a["uptime_s"] < 2 * 3600 + 600 and a["price_per_hour"] > 0
    assert (b["state"], b["gpu"], b["uptime_s"], b["price_per_hour"], b["autostop_reason"]) == ("TERMINATED", "l4", None, 0.0, "idle 60 min")
    assert (g["state"], g["spot"]) == ("PREEMPTED", True)
    # running: spend since start = $/h x uptime; stopped: their disks still bill every month
    assert a["spend_since_start"] == round(a["price_per_hour"] * a["uptime_s"] / 3600, 2)
    assert a["disk_monthly"] is None
    from gcpdl.pricing import disk_monthly

    assert b["spend_since_start"] is None
    assert b["disk_monthly"] == disk_monthly(100, "pd-standard", "europe-west4") > 0  # the disk's own type
    # one aggregatedList, then one read per stopped VM (guest attributes; operations for Spot)
    assert len(three.calls("compute.instances.aggregatedList")) == 1


def test_status_table(three):
    result = run("status")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "ZONE", "GPU", "UPTIME", "PRICE", "SPENT", "AUTOSTOP"]
    assert lines[1].split()[:5] == ["alpha", "RUNNING", "us-central1-a", "t4", "2h05m"]
    assert lines[2].split()[:2] == ["beta", "STOPPED"]  # GCE's TERMINATED
    assert lines[3].split()[:4] == ["gamma", "PREEMPTED", "us-east1-c", "t4*"]
    assert "beta: stopped by autostop (idle 60 min)" in lines


def test_status_one_vm_and_unknown(three):
    result = run("status", "alpha", "--json")
    assert [r["name"] for r in json.loads(result.stdout)] == ["alpha"]
    result = run("status", "ghost")
    assert result.exit_code == 1
    assert result.stderr == "Error: No gcpdl VM named ghost in project test-project. See your VMs with: gcpdl status\n"


def test_status_empty(gcp):
    result = run("status")
    assert result.exit_code == 0
    assert result.stdout == "No gcpdl VMs. Create one with: gcpdl up NAME --gpu t4\n"


def test_restarted_spot_vm_is_not_shown_as_preempted(three):
    three.advance(60)
    three.instances_by_key[("us-east1-c", "gamma")]["status"] = "RUNNING"
    three.instances_by_key[("us-east1-c", "gamma")]["lastStartTimestamp"] = three._ts()
    rows = {r["name"]: r for r in json.loads(run("status", "--json").stdout)}
    assert rows["gamma"]["state"] == "RUNNING"


def test_status_never_imports_compute_v1(three):
    code = (
        "import sys\nfrom gcpdl.cli.app import cli\n"
        "try:\n    cli(['status', '--json'])\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "print('HEAVY', [m for m in ('google.cloud.compute_v1', 'paramiko', 'google.cloud.storage') if m in sys.modules], file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stderr
    assert len(json.loads(out.stdout)) == 3


def test_unreachable_endpoint_is_one_line(gcp, monkeypatch):
    from tests.fixtures.ports import free_port

    monkeypatch.setenv("GCPDL_COMPUTE_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    result = run("status")
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: Cannot reach Compute Engine at http://127.0.0.1:")
    assert result.stderr.endswith("(ConnectionError). Check your network, or GCPDL_COMPUTE_ENDPOINT if you set one.\n")


def test_token_endpoint_refusing_the_key_is_a_credentials_error(gcp, monkeypatch, tmp_path):
    key = json.loads(gcp.key_file.read_text())
    key["client_email"] = "someone-else@test-project.iam.gserviceaccount.com"
    path = tmp_path / "other.json"
    path.write_text(json.dumps(key))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    result = run("status")
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert line.startswith("Error: Could not get an access token: ")
    assert line.endswith("Run: gcloud auth application-default login")
    assert "\n" not in line
