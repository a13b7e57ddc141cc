"""`gcpdl cost` and `gcpdl autostop` against a timeline played out on the fake Compute server."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from gcpdl import pricing
from gcpdl.cost import Interval, cost_report, run_intervals

from tests.helpers import run

H = 3600.0


# --- run history arithmetic ----------------------------------------------------------------------
def test_runlog_and_api_timestamps_merge():
    log = "start 1000\nstop 4600\nstart 10000\n"
    # the agent stopped it at 13600 (no stop line); the API recorded that stop
    intervals, approx = run_intervals(log, "TERMINATED", now=20000, created=1000, last_start=10005, last_stop=13600)
    assert intervals == [Interval(1000, 4600), Interval(10000, 13600)]
    assert not approx


def test_running_vm_counts_until_now():
    intervals, approx = run_intervals("start 1000\nstop 2000\nstart 5000", "RUNNING", now=9000, created=1000, last_start=5001)
    assert intervals == [Interval(1000, 2000), Interval(5000, 9000)]
    assert sum(i.hours for i in intervals) == pytest.approx(5000 / H)
    assert not approx


def test_gcpdl_stop_line_and_api_stop_are_one_stop():
    intervals, _ = run_intervals("start 0\nstop 3600", "TERMINATED", now=9000, created=0, last_start=2, last_stop=3630)
    assert intervals == [Interval(0, 3600)]


def test_no_runlog_falls_back_to_api_timestamps_and_says_approximate():
    intervals, approx = run_intervals(None, "RUNNING", now=7200, created=0, last_start=3600)
    assert intervals == [Interval(0, 7200)] and approx
    intervals, approx = run_intervals(None, "TERMINATED", now=7200, created=0, last_start=0, last_stop=1800)
    assert intervals == [Interval(0, 1800)] and approx


def test_stopped_without_any_known_stop_time_is_approximate_not_counted_to_now():
    intervals, approx = run_intervals("start 0\nstop 100\nstart 500", "TERMINATED", now=9000, created=0, last_start=500, last_stop=100)
    assert intervals == [Interval(0, 100)] and approx


def test_garbage_lines_and_future_times_are_harmless():
    intervals, _ = run_intervals("start 0\nbanana\nstop x\nstop 99999999", "TERMINATED", now=3600, created=0)
    assert intervals == [Interval(0, 3600)]


def test_credits_days_left():
    inst = {
        "name": "box", "zone": "zones/us-central1-a", "status": "RUNNING", "machineType": "zones/us-central1-a/machineTypes/n1-standard-8",
        "guestAccelerators": [{"acceleratorType": "nvidia-tesla-t4", "acceleratorCount": 1}],
        "creationTimestamp": "1970-01-01T00:00:00Z", "metadata": {"items": [{"key": "gcpdl-runlog", "value": "start 0"}]},
        "disks": [{"source": "zones/us-central1-a/disks/box", "boot": True}],
    }
    disk = {"name": "box", "zone": "zones/us-central1-a", "sizeGb": "100", "type": "zones/us-central1-a/diskTypes/pd-balanced",
            "creationTimestamp": "1970-01-01T00:00:00Z"}
    report = cost_report([inst], [disk], now=10 * H, credits=100.0)
    rate = 0.379998 + 0.35 + 100 * 0.10 / 730  # n1-standard-8 + T4 + 100 GB pd-balanced
    assert report.burn_per_hour == pytest.approx(rate, abs=1e-3)
    assert report.spend == pytest.approx(10 * rate, abs=1e-2)
    assert report.days_left == pytest.approx(100 / (rate * 24), rel=1e-3)
    assert cost_report([], [], now=0, credits=100.0).days_left is None


# --- a timeline on the fake Compute server -------------------------------------------------------
@pytest.fixture
def timeline(gcp):
    """Four things billing in one project, seeded at the times they happened (the fake's clock
    is moved to each moment so creation timestamps are the API's own)."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    T = now.timestamp()

    def at(hours_ago: float):
        moment = now - timedelta(hours=hours_ago)
        gcp.now = lambda: moment
        return moment

    managed = {"gcpdl": "managed"}
    # box: created 48 h ago; gcpdl started/stopped it twice; the autostop agent stopped the
    # third run 9 h ago (no stop line: only lastStopTimestamp knows)
    runlog = "\n".join(f"{e} {int(T - h * H)}" for e, h in (("start", 48), ("stop", 40), ("start", 30), ("stop", 28), ("start", 10)))
    at(48)
    gcp.add_instance("box", "us-central1-a", status="TERMINATED", labels=managed, machine_type="n1-standard-8",
                     gpu=("nvidia-tesla-t4", 1), metadata={"enable-guest-attributes": "TRUE", "gcpdl-runlog": runlog},
                     creation=now - timedelta(hours=48), last_start=now - timedelta(hours=10), last_stop=now - timedelta(hours=9))
    # l4: a Spot G2 in europe-west4, running for 5 h
    at(5)
    gcp.add_instance("l4", "europe-west4-a", status="RUNNING", labels=managed, machine_type="g2-standard-8", spot=True,
                     metadata={"gcpdl-runlog": f"start {int(T - 5 * H)}"}, creation=now - timedelta(hours=5))
    # old: a Spot T4 preempted 2 h ago after 1 h (the API's stop, no runlog line)
    at(3)
    gcp.add_instance("old", "us-central1-a", status="RUNNING", labels=managed, machine_type="n1-standard-4",
                     gpu=("nvidia-tesla-t4", 1), spot=True, metadata={"gcpdl-runlog": f"start {int(T - 3 * H)}"},
                     creation=now - timedelta(hours=3))
    at(2)
    gcp.preempt("us-central1-a", "old")
    # not gcpdl's: ignored
    gcp.add_instance("someone-else", "us-central1-a", status="RUNNING", machine_type="n1-standard-96", gpu=None)
    # gone-data: a data disk `down` kept, 24 h old
    at(24)
    from gcpdl.clients import ClientFactory
    from gcpdl.compute.adapter import Compute
    from gcpdl.compute.model import ApiCall
    from gcpdl.deadline import Deadline
    from gcpdl.settings import resolve

    compute = Compute(ClientFactory(resolve()), gcp.project)
    body = {"name": "gone-data", "sizeGb": "200", "type": "projects/test-project/zones/us-central1-a/diskTypes/pd-balanced",
            "labels": {"gcpdl": "managed", "gcpdl-vm": "gone"}}
    compute.run(ApiCall("disks.insert", "POST", "/compute/v1/projects/test-project/zones/us-central1-a/disks", body,
                        "test-project", "us-central1-a", "gone-data"), Deadline(30))
    gcp.now = lambda: datetime.now(timezone.utc)
    return T


def _expected(T: float):
    t4_n1_8 = pricing.hourly_price("n1-standard-8", "t4", 1, "us-central1").running
    g2_spot_eu = pricing.hourly_price("g2-standard-8", "l4", 1, "europe-west4", spot=True).running
    t4_n1_4_spot = pricing.hourly_price("n1-standard-4", "t4", 1, "us-central1", spot=True).running
    boot = pricing.disk_monthly(100, "pd-standard", "us-central1") / 730  # the fake's boot disks
    boot_eu = pricing.disk_monthly(100, "pd-standard", "europe-west4") / 730
    data = pricing.disk_monthly(200, "pd-balanced", "us-central1") / 730
    return {
        "box": (11.0, 11.0 * t4_n1_8 + 48 * boot),
        "l4": (5.0, 5.0 * g2_spot_eu + 5 * boot_eu),
        "old": (1.0, 1.0 * t4_n1_4_spot + 3 * boot),
        "gone-data": 24 * data,
        "burn": g2_spot_eu + 2 * boot + boot_eu + data,
    }


def test_cost_of_a_timeline(timeline):
    result = run("cost", "--json", "--credits", "100")
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    exp = _expected(timeline)
    vms = {v["name"]: v for v in r["vms"]}
    assert sorted(vms) == ["box", "l4", "old"]
    for name in ("box", "l4", "old"):
        hours, spend = exp[name]
        assert vms[name]["running_hours"] == pytest.approx(hours, abs=0.01), name
        assert vms[name]["spend"] == pytest.approx(spend, abs=0.02), name
        assert vms[name]["approximate"] is False
    assert [run["hours"] for run in vms["box"]["runs"]] == [8.0, 2.0, 1.0]
    assert vms["old"]["state"] == "TERMINATED" and vms["old"]["burn_per_hour"] == pytest.approx(100 * 0.04 / 730, abs=1e-4)
    assert [d["name"] for d in r["loose_disks"]] == ["gone-data"]
    assert r["loose_disks"][0]["spend"] == pytest.approx(exp["gone-data"], abs=0.01)
    assert r["burn_per_hour"] == pytest.approx(exp["burn"], abs=1e-3)
    assert r["spend"] == pytest.approx(sum(exp[n][1] for n in ("box", "l4", "old")) + exp["gone-data"], abs=0.05)
    assert r["days_left"] == pytest.approx(100 / (exp["burn"] * 24), abs=0.1)
    assert r["prices_date"] == pricing.prices_date()


def test_cost_human_output_and_credits_from_config(timeline, monkeypatch):
    monkeypatch.setenv("GCPDL_CREDITS", "250")
    result = run("cost")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.splitlines()[0].split() == ["NAME", "STATE", "ZONE", "RAN", "PRICE", "DISKS", "SPENT"]
    assert "box" in out and "11.0 h" in out
    assert "Kept disk gone-data (200 GB pd-balanced, us-central1-a): $20.00/month" in out
    assert "Credits: $250.00 last about" in out
    assert "List prices dated" in out


def test_cost_of_one_vm(timeline):
    r = json.loads(run("cost", "l4", "--json").stdout)
    assert [v["name"] for v in r["vms"]] == ["l4"] and r["loose_disks"] == [] and r["days_left"] is None


@pytest.mark.parametrize(
    "args, line",
    [
        (["cost", "--credits", "lots"], "Error: Invalid --credits 'lots': expected an amount in USD like 300 or 1000.50."),
        (["cost", "--credits", "-5"], "Error: Invalid --credits '-5': expected an amount in USD like 300 or 1000.50."),
        (["cost", "Bad_Name"], None),
    ],
)
def test_cost_bad_input_before_any_api_call(gcp, args, line):
    result = run(*args)
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("Error: ")
    if line:
        assert result.stderr.strip() == line
    assert gcp.requests == []


def test_cost_unknown_name(gcp):
    result = run("cost", "nope")
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: No gcpdl VM or data disk named nope in project test-project. See your VMs with: gcpdl status"


# --- gcpdl autostop ------------------------------------------------------------------------------
def _autostop_value(gcp, name="box", zone="us-central1-a"):
    items = gcp.instance(zone, name)["metadata"]["items"]
    return {i["key"]: i["value"] for i in items}.get("gcpdl-autostop")


def test_autostop_changes_the_metadata_keeping_the_rest(gcp):
    gcp.add_instance("box", labels={"gcpdl": "managed"},
                     metadata={"enable-guest-attributes": "TRUE", "gcpdl-autostop": "60", "gcpdl-runlog": "start 1"})
    result = run("autostop", "box", "30m", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["autostop"] == "30"
    items = {i["key"]: i["value"] for i in gcp.instance("us-central1-a", "box")["metadata"]["items"]}
    assert items == {"enable-guest-attributes": "TRUE", "gcpdl-autostop": "30", "gcpdl-runlog": "start 1"}
    result = run("autostop", "box", "off")
    assert result.exit_code == 0
    assert result.stdout.strip() == "box in us-central1-a: autostop off: it runs (and bills) until you stop it, from now."
    assert _autostop_value(gcp) == "off"
    # the same value again sends nothing
    before = len(gcp.calls("compute.instances.setMetadata"))
    assert run("autostop", "box", "off").exit_code == 0
    assert len(gcp.calls("compute.instances.setMetadata")) == before


def test_autostop_on_a_stopped_vm_applies_at_next_start(gcp):
    gcp.add_instance("box", status="TERMINATED", labels={"gcpdl": "managed"})
    result = run("autostop", "box", "2h")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "box in us-central1-a: stops after 120 min idle, from when it next starts (it is STOPPED)."
    assert _autostop_value(gcp) == "120"


def test_autostop_retries_a_stale_fingerprint_and_keeps_the_other_write(gcp):
    """Someone else changes the metadata between our read and our write (a real 412 from the
    API): the setting is read again and written on top of their change, not over it."""
    from gcpdl.autostop import set_autostop
    from gcpdl.clients import ClientFactory
    from gcpdl.compute import requests as rq
    from gcpdl.compute.adapter import Compute
    from gcpdl.settings import resolve

    gcp.add_instance("box", labels={"gcpdl": "managed"})

    class ConcurrentWriter(Compute):
        raced = False

        def run(self, call, deadline):
            if not self.raced:
                self.raced = True
                inst = gcp.instance("us-central1-a", "box")
                items = {i["key"]: i["value"] for i in inst["metadata"]["items"]} | {"gcpdl-runlog": "start 5"}
                super().run(rq.set_metadata(self.project, "us-central1-a", "box", items, inst["metadata"]["fingerprint"]), deadline)
            return super().run(call, deadline)

    result = set_autostop(ConcurrentWriter(ClientFactory(resolve()), gcp.project), "box", 45)
    assert result.minutes == 45
    items = {i["key"]: i["value"] for i in gcp.instance("us-central1-a", "box")["metadata"]["items"]}
    assert items["gcpdl-autostop"] == "45" and items["gcpdl-runlog"] == "start 5"
    assert len(gcp.calls("compute.instances.setMetadata")) == 3  # theirs, our stale one (412), our retry


@pytest.mark.parametrize(
    "window, line",
    [
        ("1m", "Error: Invalid WINDOW '1m': choose between 5m and 168h, or off."),
        ("soon", "Error: Invalid WINDOW 'soon': expected minutes like 60m, hours like 2h, or off."),
    ],
)
def test_autostop_bad_window_before_any_api_call(gcp, window, line):
    result = run("autostop", "box", window)
    assert result.exit_code == 2
    assert result.stderr.strip() == line
    assert gcp.requests == []


def test_autostop_refuses_vms_gcpdl_did_not_create(gcp):
    gcp.add_instance("theirs")
    result = run("autostop", "theirs", "30m")
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: VM theirs was not created by gcpdl, so it has no autostop agent."
    assert gcp.calls("compute.instances.setMetadata") == []
