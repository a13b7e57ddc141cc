"""Money in plain sight (issue 10 §3): one price everywhere, AUTOSTOP and kept disks in `status`,
STOPPED rather than GCE's TERMINATED, `autostop NAME` showing the setting, and `up`'s summary
saying what keeps billing. All through the real CLI against the fake Compute server."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest

from gcpdl import pricing
from tests.helpers import run

MANAGED = {"gcpdl": "managed"}


def _kept_disk(gcp, name: str, vm: str, size_gb: int = 200, zone: str = "us-central1-a") -> None:
    """A data disk that `down` kept: labelled by gcpdl, attached to nothing (made through the API)."""
    from gcpdl.clients import ClientFactory
    from gcpdl.compute.adapter import Compute
    from gcpdl.compute.model import ApiCall
    from gcpdl.deadline import Deadline
    from gcpdl.settings import resolve

    compute = Compute(ClientFactory(resolve()), gcp.project)
    body = {"name": name, "sizeGb": str(size_gb), "type": f"projects/{gcp.project}/zones/{zone}/diskTypes/pd-balanced",
            "labels": {"gcpdl": "managed", "gcpdl-vm": vm}}
    compute.run(ApiCall("disks.insert", "POST", f"/compute/v1/projects/{gcp.project}/zones/{zone}/disks", body,
                        gcp.project, zone, name), Deadline(30))


@pytest.fixture
def fleet(gcp):
    now = datetime.now(timezone.utc)
    gcp.add_instance("alpha", labels=MANAGED, machine_type="n1-standard-8", last_start=now - timedelta(hours=2, minutes=5),
                     metadata={"gcpdl-autostop": "30", "gcpdl-runlog": f"start {int((now - timedelta(hours=2, minutes=5)).timestamp())}"})
    gcp.add_instance("beta", zone="europe-west4-a", labels={**MANAGED, "gcpdl-gpu": "l4"}, machine_type="g2-standard-8",
                     status="TERMINATED", metadata={"enable-guest-attributes": "TRUE"})  # no autostop key: the default
    gcp.add_instance("gamma", zone="us-east1-c", labels=MANAGED, spot=True, metadata={"gcpdl-autostop": "off"})
    gcp.preempt("us-east1-c", "gamma")
    _kept_disk(gcp, "old-data", "old")
    return gcp


def test_status_and_cost_show_one_price_for_the_same_vm(fleet):
    """n1-standard-8 + T4 was $0.74 in `status` (disk included) and $0.73 in `cost`."""
    expected = pricing.hourly_price("n1-standard-8", "t4", 1, "us-central1").running
    status_rows = {r["name"]: r for r in json.loads(run("status", "--json").stdout)}
    cost = json.loads(run("cost", "--json").stdout)
    cost_rows = {v["name"]: v for v in cost["vms"]}
    assert status_rows["alpha"]["price_per_hour"] == cost_rows["alpha"]["running_per_hour"] == expected
    table = run("status").stdout
    cost_table = run("cost").stdout
    shown = f"{expected:.2f}"
    assert re.search(rf"^alpha .*\${shown}/h", table, re.M), table
    assert re.search(rf"^alpha .* \${shown}/h ", cost_table, re.M), cost_table


def test_cost_json_says_state_like_every_other_command(fleet):
    vms = {v["name"]: v for v in json.loads(run("cost", "--json").stdout)["vms"]}
    assert "status" not in vms["alpha"]
    assert (vms["alpha"]["state"], vms["beta"]["state"]) == ("RUNNING", "TERMINATED")


def test_cost_suggests_gcpdl_down_for_a_kept_disk(fleet):
    out = run("cost").stdout
    assert "gcpdl down old --delete-data" in out
    assert "gcloud" not in out


def test_status_table_fits_80_columns(fleet):
    result = run("status")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), "\n" + result.stdout
    assert lines[0].split() == ["NAME", "STATE", "ZONE", "GPU", "UPTIME", "PRICE", "SPENT", "AUTOSTOP"]
    rows = {line.split()[0]: line.split() for line in lines[1:5]}
    assert rows["alpha"][:3] == ["alpha", "RUNNING", "us-central1-a"] and rows["alpha"][-1] == "30m"
    assert rows["beta"][1] == "STOPPED" and rows["beta"][-1] == "60m"  # GCE's TERMINATED; the default window
    assert re.match(r"^\$\d+\.\d\d/mo$", rows["beta"][5])  # a stopped VM still pays for its disks
    assert rows["gamma"][1:3] == ["PREEMPTED", "us-east1-c"] and rows["gamma"][3] == "t4*" and rows["gamma"][-1] == "off"
    monthly = pricing.disk_monthly(200, "pd-balanced", "us-central1")
    assert " ".join(rows["old-data"]) == f"old-data DISK ONLY us-central1-a - - ${monthly:.2f}/mo - -"
    assert "TERMINATED" not in result.stdout
    assert "* Spot VM: cheaper, and Google may stop it at any time." in lines
    assert f"old-data: kept data disk, ${monthly:.2f}/month until: gcpdl down old --delete-data" in lines


def test_status_json_has_autostop_and_kept_disks(fleet):
    rows = json.loads(run("status", "--json").stdout)
    vms = {r["name"]: r for r in rows if r["kind"] == "vm"}
    disks = [r for r in rows if r["kind"] == "disk"]
    assert (vms["alpha"]["autostop"], vms["beta"]["autostop"], vms["gamma"]["autostop"]) == ("30m", "60m", "off")
    assert vms["beta"]["state"] == "TERMINATED"  # JSON keeps the API's word
    assert [(d["name"], d["vm"], d["size_gb"], d["disk_monthly"]) for d in disks] == [
        ("old-data", "old", 200, pricing.disk_monthly(200, "pd-balanced", "us-central1"))]


def test_status_of_a_deleted_vm_shows_its_kept_disk(fleet):
    result = run("status", "old")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].split()[:3] == ["old-data", "DISK", "ONLY"]


def test_autostop_without_a_window_shows_the_setting_and_changes_nothing(fleet):
    result = run("autostop", "alpha")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        "alpha in us-central1-a: stops after 30 min idle. Change it: gcpdl autostop alpha 2h (or off)."
    )
    result = run("autostop", "beta", "--json")
    shown = json.loads(result.stdout)
    assert (shown["autostop"], shown["state"]) == ("60", "TERMINATED") and "status" not in shown
    assert fleet.calls("compute.instances.setMetadata") == []


def test_autostop_human_output_says_stopped(gcp):
    gcp.add_instance("box", status="TERMINATED", labels=MANAGED)
    result = run("autostop", "box", "2h")
    assert result.stdout.strip() == "box in us-central1-a: stops after 120 min idle, from when it next starts (it is STOPPED)."


def test_up_summary_says_what_keeps_billing(env):
    result = run("up", "box", "--gpu", "t4", "--data-disk", "50", "--autostop", "2h", "--yes")
    assert result.exit_code == 0, result.output
    out = result.stdout
    monthly = pricing.disk_monthly(100, "pd-balanced", "us-central1") + pricing.disk_monthly(50, "pd-balanced", "us-central1")
    assert f"  disks     ${monthly:.2f}/month, running or stopped (boot + data disk box-data)" in out
    assert "  autostop  after 2h idle; change it: gcpdl autostop box 2h|off" in out
    assert "  data      gcpdl sync gs://BUCKET/DIR lands in /data/DIR (Jupyter: data/DIR)" in out
    assert "Stop the GPU bill: gcpdl stop box. Stop every bill: gcpdl down box --delete-data" in out
    assert all(len(line) <= 80 for line in out.splitlines()), out
    data = json.loads(run("up", "box", "--json", "--yes").stdout)
    assert data["autostop"] == "120" and data["disk_monthly"] == pytest.approx(monthly)
