"""The disk is the real limit on a VM (issue 11): GCE's dated disk table, the arithmetic on it,
`up --data-disk-type/--data-disk-throughput/--local-ssd` in the plan and in request bodies that
the fake Compute server accepts (and refuses where the API does), and `sync --on`'s two lines."""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest
from click.testing import CliRunner

import gcpdl.settings
from gcpdl import disks
from gcpdl.cli.app import cli
from gcpdl.clients import ClientFactory
from gcpdl.compute import lifecycle
from gcpdl.compute import requests as rq
from gcpdl.compute.adapter import Compute
from gcpdl.deadline import Deadline
from gcpdl.errors import GcpdlError
from gcpdl.spec import build_spec

MB = 1e6


# --- the table -------------------------------------------------------------------------------
def test_the_table_is_dated_sourced_and_says_what_it_could_not_verify():
    t = disks.table()
    assert t["retrieved"] == disks.table_date() == "2026-12-05"
    for key in ("pd", "pd_egress", "hyperdisk", "local_ssd", "network"):
        assert "https://cloud.google.com/" in t["sources"][key]
    assert t["unverified"] and any("baseline" in u for u in t["unverified"])
    # the figures read on Google's "Persistent Disk performance" page (throughput limits)
    pd = t["persistent_disk"]
    assert [pd[k]["write_mibps_per_gib"] for k in ("pd-standard", "pd-balanced", "pd-ssd")] == [0.12, 0.28, 0.48]
    assert [max(c for _, c in pd[k]["write_cap_by_vcpus"]) for k in ("pd-standard", "pd-balanced", "pd-ssd")] == [400, 1200, 1200]
    assert (t["hyperdisk_balanced"]["min_mibps"], t["hyperdisk_balanced"]["max_mibps"]) == (140, 2400)
    assert t["local_ssd"]["device_gb"] == 375 and t["local_ssd"]["interface"] == "NVME"


def test_which_machines_take_hyperdisk_and_how_many_local_ssds():
    assert not disks.hyperdisk_supported("n1-standard-8") and not disks.hyperdisk_supported("a2-highgpu-1g")
    assert disks.hyperdisk_supported("g2-standard-8") and disks.hyperdisk_supported("a3-highgpu-8g")
    assert disks.local_ssd_counts("n1-standard-8") == [1, 2, 3, 4, 5, 6, 7, 8, 16, 24]
    assert disks.local_ssd_counts("g2-standard-8") == [1] and disks.local_ssd_counts("g2-standard-48") == [4]
    assert disks.local_ssd_counts("a2-highgpu-2g") == [2, 4, 8]
    assert disks.local_ssd_counts("a3-highgpu-8g") == [16] and disks.local_ssd_bundled("a3-highgpu-8g") == 16


# --- the arithmetic, against the cited pages ---------------------------------------------------
def test_pd_write_rate_grows_with_size_until_the_type_cap():
    # pd-balanced: 140 MiB/s baseline + 0.28 MiB/s per GiB: 500 GB -> 280 MiB/s, set by its size
    e = disks.estimate("n1-standard-8", disks.Disk("pd-balanced", 500))
    assert (e.mib_s, e.bound, e.kind) == (280.0, "disk size", "disk-bound")
    # pd-ssd: 240 + 0.48 x 1,000 = 720 MiB/s
    assert disks.estimate("n1-standard-16", disks.Disk("pd-ssd", 1000)).mib_s == 720.0
    # 4,000 GB of pd-ssd would be 2,160 by size: the 1,200 MiB/s per-VM write cap binds
    big = disks.estimate("n1-standard-16", disks.Disk("pd-ssd", 4000))
    assert (big.mib_s, big.bound) == (1200.0, "disk type cap")
    # pd-standard: 0.12 per GiB and no baseline: 1,000 GB -> 120 MiB/s
    assert disks.estimate("n1-standard-16", disks.Disk("pd-standard", 1000)).mib_s == pytest.approx(120.0)


def test_pd_writes_are_capped_by_the_vms_egress_as_the_optimizing_page_computes():
    # "max write bandwidth" = egress cap / 1.16: 216, 1,078, 1,724, 3,448 MB/s for N1 at 1, 2-7, 8-15, 16+ vCPUs
    for machine, mb in (("n1-standard-1", 216), ("n1-standard-4", 1078), ("n1-standard-8", 1724), ("n1-standard-16", 3448)):
        bounds = disks.disk_bounds(machine, disks.Disk("pd-ssd", 10000))
        assert bounds["network egress for disk writes"] * disks.MIB / MB == pytest.approx(mb, abs=1.5), machine


def test_local_ssd_hyperdisk_and_network_bounds():
    four = disks.estimate("n1-standard-32", disks.Disk("local-ssd", count=4))
    assert (four.mib_s, four.bound, four.estimated) == (1400.0, "local SSD", True)
    assert disks.estimate("n1-standard-32", disks.Disk("local-ssd", count=3)).mib_s == 1050.0  # 350 a device
    # 24 devices would write 4,680 MiB/s; an 8-vCPU VM's 16 Gbit/s network does not carry that
    net = disks.estimate("n1-standard-8", disks.Disk("local-ssd", count=24))
    assert net.bound == "network" and net.kind == "network-bound" and net.mib_s == pytest.approx(16e9 / 8 / disks.MIB)
    hd = disks.estimate("g2-standard-8", disks.Disk("hyperdisk-balanced", 500, 600))
    assert (hd.mib_s, hd.bound) == (600.0, "provisioned throughput")


def test_time_for_n_bytes():
    assert disks.seconds_for(500 * 10**9, 280) == pytest.approx(500e9 / (280 * 2**20))
    assert disks.human_time(disks.seconds_for(500 * 10**9, 280)) == "28 min"
    assert disks.human_time(30) == "30 s" and disks.human_time(3 * 3600) == "3.0 h"


# --- spec: validated before any API call -----------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(gpu="t4", data_disk="500", data_disk_type="hyperdisk-balanced"),
     "n1-standard-8 cannot use hyperdisk-balanced (--data-disk-type): Hyperdisk Balanced attaches to"),
    (dict(gpu="a100", data_disk="500", data_disk_type="hyperdisk-balanced"), "a2-highgpu-1g cannot use hyperdisk-balanced"),
    (dict(gpu="t4", disk_type="hyperdisk-balanced"), "n1-standard-8 cannot use hyperdisk-balanced (--disk-type)"),
    (dict(gpu="l4", data_disk="500", data_disk_type="pd-standard"), "g2-standard-8 cannot attach pd-standard"),
    (dict(gpu="l4", data_disk="500", data_disk_type="pd-ssd", data_disk_throughput=600),
     "--data-disk-throughput is for hyperdisk-balanced only"),
    (dict(gpu="l4", data_disk="500", data_disk_type="hyperdisk-balanced", data_disk_throughput=5000),
     "Invalid --data-disk-throughput 5000: Hyperdisk Balanced takes 140 to 2400 MiB/s."),
    (dict(gpu="l4", data_disk_type="pd-ssd"), "--data-disk-type needs --data-disk SIZE"),
    (dict(gpu="l4", data_disk="500", data_disk_type="nvme"), "Unknown data disk type 'nvme'"),
    (dict(gpu="t4", local_ssd=9), "n1-standard-8 takes 1, 2, 3, 4, 5, 6, 7, 8, 16, 24 local SSDs, not 9."),
    (dict(gpu="l4", local_ssd=2), "g2-standard-8 takes 1 local SSDs, not 2."),
    (dict(gpu="h100:8", local_ssd=8), "a3-highgpu-8g comes with exactly 16 local SSDs; use --local-ssd 16."),
    (dict(gpu="t4", local_ssd=-1), "Invalid --local-ssd -1"),
])
def test_bad_disk_options_are_refused_with_one_clear_line(kwargs, message):
    from gcpdl.errors import InvalidInput

    with pytest.raises(InvalidInput) as e:
        build_spec("box", **kwargs)
    assert message in e.value.message


def test_good_disk_options():
    s = build_spec("box", gpu="l4", data_disk="1TB", data_disk_type="hyperdisk-balanced", data_disk_throughput=1200, local_ssd=1)
    assert (s.data_disk_gb, s.data_disk_type, s.data_disk_throughput, s.local_ssd) == (1024, "hyperdisk-balanced", 1200, 1)
    assert s.disks() == ((100, "pd-balanced"), (1024, "hyperdisk-balanced", 1200), (375, "local-ssd"))
    assert build_spec("box", gpu="h100:8", spot=True, local_ssd=16).local_ssd == 16


def _cli_error(*args: str) -> str:
    r = CliRunner().invoke(cli, ["up", "box", *args, "--dry-run"])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    return lines[0]


def test_the_cli_refuses_before_anything(plan_env):
    assert "n1-standard-8 cannot use hyperdisk-balanced" in _cli_error("--gpu", "t4", "--data-disk", "500",
                                                                        "--data-disk-type", "hyperdisk-balanced")
    assert "g2-standard-8 takes 1 local SSDs, not 4." in _cli_error("--gpu", "l4", "--local-ssd", "4")


# --- the plan ----------------------------------------------------------------------------------
@pytest.fixture
def plan_env(monkeypatch):
    monkeypatch.setenv("GCPDL_PROJECT", "demo-project")
    monkeypatch.setenv("GCPDL_ZONE", "us-central1-a")
    monkeypatch.setenv("GCPDL_MY_IP", "203.0.113.7")


def _plan(*args: str) -> dict:
    r = CliRunner().invoke(cli, ["up", "box", *args, "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_plan_json_shows_each_disks_speed_and_price_and_the_bodies_carry_them(plan_env):
    plan = _plan("--gpu", "l4", "--data-disk", "500", "--data-disk-type", "hyperdisk-balanced",
                 "--data-disk-throughput", "600", "--local-ssd", "1")
    st = plan["storage"]
    assert st["table_date"] == "2026-12-05"
    data = st["data"]
    assert data["type"] == "hyperdisk-balanced" and data["size_gb"] == 500
    assert (data["write"]["mib_per_s"], data["write"]["bound"]) == (600.0, "provisioned throughput")
    # 500 GB x $0.08 + (600 - 140 included) MiB/s x $0.04 a month
    assert data["price_per_month"] == pytest.approx(58.40) and data["price_estimated"] is True
    ssd = st["local_ssd"]
    assert (ssd["size_gb"], ssd["mount"], ssd["wiped_on_stop"]) == (375, "/scratch", True)
    assert ssd["price_per_month"] == pytest.approx(30.0) and ssd["write"]["mib_per_s"] == 350.0
    assert st["boot"]["write"]["mib_per_s"] == pytest.approx(140 + 0.28 * 100)
    disk_body = next(r["body"] for r in plan["requests"] if r["path"].endswith("/disks"))
    assert disk_body["type"].endswith("/diskTypes/hyperdisk-balanced") and disk_body["provisionedThroughput"] == "600"
    inst = plan["requests"][-1]["body"]
    scratch = [d for d in inst["disks"] if d["type"] == "SCRATCH"]
    assert scratch == [{"type": "SCRATCH", "autoDelete": True, "deviceName": "local-ssd-0", "interface": "NVME",
                        "mode": "READ_WRITE", "initializeParams": {
                            "diskType": "projects/demo-project/zones/us-central1-a/diskTypes/local-ssd", "diskSizeGb": "375"}}]
    meta = {i["key"]: i["value"] for i in inst["metadata"]["items"]}
    assert "LOCAL_SSD=1 " in meta["startup-script"] and "stage scratch" in meta["startup-script"]
    # the price per hour is what stopping saves: the local SSD (discarded on stop) counts, the
    # persistent data disk (billed either way, shown per month) does not
    base = _plan("--gpu", "l4")["price_per_hour"]
    assert plan["price_per_hour"] == pytest.approx(base + 30.0 / 730, abs=0.002)


def test_plan_human_lines(plan_env):
    r = CliRunner().invoke(cli, ["up", "box", "--gpu", "t4", "--spot", "--data-disk", "1000", "--data-disk-type", "pd-ssd",
                                 "--local-ssd", "2", "--dry-run"])
    assert r.exit_code == 0, r.output
    out = r.stdout
    assert ("data      box-data at /data, kept by `gcpdl down`: 1,000 GB pd-ssd: writes 720 MiB/s (disk-bound: disk size), "
            "$170.00/month = $0.233/h") in out
    assert "boot      100 GB pd-balanced: writes 168 MiB/s (disk-bound: disk size), $10.00/month" in out
    assert "scratch   2 x 375 GB local SSD at /scratch: writes about 700 MiB/s (disk-bound: local SSD)" in out
    assert "wiped when the VM stops (gcpdl stop, autostop, --max-hours) or is preempted (Spot)" in out
    assert "(estimated)" in out  # the local SSD price is flagged


# --- request bodies against the fake Compute server ----------------------------------------
@pytest.fixture
def compute(gcp, monkeypatch) -> Compute:
    monkeypatch.setenv("GCPDL_ZONE", "us-central1-a")
    factory = ClientFactory(gcpdl.settings.resolve())
    return Compute(factory, factory.project())


def _create(compute: Compute, spec, zone: str = "us-central1-a") -> None:
    for call in lifecycle.plan(compute.project, zone, spec, "203.0.113.7/32").requests:
        compute.run(call, Deadline(60, what=call.kind))


def test_the_fake_accepts_what_up_sends(gcp, compute):
    spec = build_spec("box", gpu="l4", data_disk="500", data_disk_type="hyperdisk-balanced", data_disk_throughput=600, local_ssd=1)
    _create(compute, spec)
    disk = next(d for d in gcp.disks() if d["name"] == "box-data")
    assert disk["type"].endswith("/hyperdisk-balanced") and disk["provisionedThroughput"] == "600"
    inst = compute.get(f"{rq.instances_path(compute.project, 'us-central1-a')}/box", Deadline(30))
    assert [d["type"] for d in inst["disks"]] == ["PERSISTENT", "PERSISTENT", "SCRATCH"]
    assert inst["disks"][2]["interface"] == "NVME" and inst["disks"][2]["diskSizeGb"] == "375"
    # and sync's reading of it: which disk each destination is on
    data = disks.disk_for_dest("/data/imagenet", inst, {"box-data": disk})
    assert (data.kind, data.size_gb, data.provisioned_mibps, data.name) == ("hyperdisk-balanced", 500, 600, "box-data")
    assert disks.disk_for_dest("/scratch/x", inst, {}) == disks.Disk("local-ssd", count=1, name="local SSD")
    machine, boot = disks.vm_storage(compute, compute.project, "box", None, "/home/me/x", Deadline(30))
    assert machine == "g2-standard-8" and (boot.kind, boot.size_gb, boot.name) == ("pd-balanced", 100, "box")


def test_n1_with_four_local_ssds_and_a_pd_ssd_data_disk(gcp, compute):
    _create(compute, build_spec("box", gpu="t4", data_disk="200", data_disk_type="pd-ssd", local_ssd=4))
    assert next(d for d in gcp.disks() if d["name"] == "box-data")["type"].endswith("/pd-ssd")


@pytest.mark.parametrize("change, message", [
    # what gcpdl's validation stops first: the fake (the API) refuses it too
    (dict(data_disk_type="hyperdisk-balanced", data_disk_throughput=600), "disk type cannot be used by [n1-standard-8]"),
    (dict(data_disk_type="pd-balanced", data_disk_throughput=600), "provisionedThroughput can only be set for Hyperdisk"),
    (dict(local_ssd=9), "n1-standard-8 does not support 9 local SSD disks"),
])
def test_the_fake_refuses_what_the_api_refuses(gcp, compute, change, message):
    spec = dataclasses.replace(build_spec("box", gpu="t4", data_disk="200"), **change)
    with pytest.raises(GcpdlError) as e:
        _create(compute, spec)
    assert message in e.value.message
    assert not [i for i in gcp.instances() if i["name"] == "box"]


def test_the_fake_checks_hyperdisk_ranges_and_scratch_disks(gcp, compute):
    spec = dataclasses.replace(build_spec("box", gpu="l4", data_disk="200", data_disk_type="hyperdisk-balanced"),
                               data_disk_throughput=5000)
    with pytest.raises(GcpdlError) as e:
        compute.run(rq.data_disk_insert(compute.project, "us-central1-a", spec), Deadline(30))
    assert "must be between 140 and 2400" in e.value.message
    body = rq.instance_body(compute.project, "us-central1-a", build_spec("box", gpu="l4", local_ssd=1),
                            ssh_keys="", startup_script="#!/bin/bash\n", now=0)
    body["disks"][1]["interface"] = "SCSI"
    with pytest.raises(GcpdlError) as e:
        compute.run(rq.instance_insert(compute.project, "us-central1-a", body), Deadline(30))
    assert "NVME" in e.value.message


# --- the expected-time lines -----------------------------------------------------------------
def test_expected_and_met_lines():
    disk = disks.Disk("pd-balanced", 500, name="box-data")
    e = disks.estimate("n1-standard-8", disk)
    before = disks.expected_line("n1-standard-8", disk, "/data/imagenet", e)
    assert before == ("Expected: 280 MiB/s into /data/imagenet (box-data: 500 GB pd-balanced), disk-bound (disk size); "
                      "network cap 1,907 MiB/s: 100 GB in 6 min.")
    # 500 GB at 270 MiB/s: the disk's bound was met; a 1,000 GB pd-ssd would be faster still
    after = disks.met_line("n1-standard-8", disk, e, 500 * 10**9, 500e9 / (270 * disks.MIB))
    assert after.startswith("disk-bound at 280 MiB/s (270 MiB/s measured); ")
    assert "would take about" in after
    slow = disks.met_line("n1-standard-8", disk, e, 10**9, 100.0)
    assert "bound by the objects" in slow
    exp = disks.Expectation("n1-standard-8", "/data/x", disk, e)
    assert exp.after(0, 0.5) is None  # all up to date: no rate to report
    assert exp.after(10**12, 0, dry_run=True) == "At 280 MiB/s (disk-bound) these 1,000.0 GB would take about 57 min."
    ssd = disks.Disk("local-ssd", count=2, name="local SSD")
    line = disks.expected_line("n1-standard-16", ssd, "/scratch/x", disks.estimate("n1-standard-16", ssd))
    assert "2 x 375 GB local SSD" in line and "after a stop the re-run is a full download" in line


def test_sync_on_a_vm_prints_what_bounds_it_before_and_after(ssh_vm, gcs, tmp_path, monkeypatch):
    monkeypatch.setenv("GCPDL_REMOTE_PYTHON", sys.executable)
    monkeypatch.setenv("GCPDL_REMOTE_DIR", str(tmp_path / "vm-gcpdl"))
    gcs.create_bucket("vmdata", public=True)
    gcs.generate("vmdata", "train/", count=5, size=1000, seed=3)
    r = CliRunner().invoke(cli, ["sync", "gs://vmdata/train", str(tmp_path / "vm-disk"), "--on", "box", "--json"])
    assert r.exit_code == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("Expected: ")]
    # the fixture's VM boots from the API's default type, pd-standard: 0.12 MiB/s per GiB
    assert len(lines) == 1 and "(box: 100 GB pd-standard), disk-bound (disk size)" in lines[0]
    s = json.loads(r.stdout)
    exp = s["expected"]
    assert (exp["disk"], exp["disk_type"], exp["bound"], exp["mib_per_s"]) == ("box", "pd-standard", "disk size", 12.0)
    assert exp["before"] == lines[0] and exp["after"] and r.stderr.rstrip().endswith(exp["after"])


def test_stop_discards_local_ssds_as_the_api_requires(gcp, compute):
    """instances.stop needs discardLocalSsd on a VM with local SSDs (the discovery document says
    so): gcpdl's stop says true, matching what the plan promises (wiped when the VM stops)."""
    _create(compute, build_spec("box", gpu="t4", local_ssd=2))
    compute.run(rq.instance_stop(compute.project, "us-central1-a", "box"), Deadline(60))
    inst = next(i for i in gcp.instances() if i["name"] == "box")
    assert inst["status"] == "TERMINATED" and inst["gcpdlFakeLocalSsdDiscarded"] is True
