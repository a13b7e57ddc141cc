"""Issue 8 §5: `up` checks GPU quota in its pre-flight reads and stops before any mutation.

The fake Compute server models project quotas (GET projects/P) and regional ones (GET
regions/R) with usage from its own instances; `up` must read them, not learn about them from a
failed insert after creating a firewall rule."""

from __future__ import annotations

import json

import pytest

from tests.fakes.compute_catalog import REGIONS
from tests.helpers import ZONE, run

PAGE = "https://console.cloud.google.com/iam-admin/quotas?project=test-project&metric=compute.googleapis.com"
WAIT = ("(approval usually takes from a few hours to 2 business days; "
        "free-trial accounts must upgrade to a paid account before any GPU quota is granted).")


def mutations(fake) -> list[str]:
    return [r.method_id for r in fake.requests if r.method in ("POST", "PATCH", "PUT", "DELETE")]


def assert_nothing_created(fake) -> None:
    assert mutations(fake) == []
    assert fake.instances() == [] and fake.disks() == [] and fake.firewalls() == []


def test_no_gpu_quota_stops_before_any_mutation(env):
    env.set_quota("GPUS_ALL_REGIONS", 0)
    r = run("up", "box", "--gpu", "t4", "--yes", "--data-disk", "100")
    assert r.exit_code == 1
    assert r.stderr.splitlines()[-1] == (
        "Error: Quota GPUS_ALL_REGIONS (all regions) is 0, so no VM with this GPU can be created. "
        f"Request GPUS_ALL_REGIONS >= 1 at {PAGE}/gpus_all_regions {WAIT}"
    )
    assert "Creating box" not in r.stderr
    assert_nothing_created(env)


def test_quota_in_use_counts(env):
    env.add_instance("other", zone="us-east1-c", gpu=("nvidia-tesla-t4", 2), labels={})
    env.set_quota("GPUS_ALL_REGIONS", 2)
    r = run("up", "box", "--gpu", "t4", "--yes")
    assert r.exit_code == 1
    assert r.stderr.splitlines()[-1].startswith(
        "Error: Quota GPUS_ALL_REGIONS (all regions) is 2 with 2 in use: no room for 1 more. Request GPUS_ALL_REGIONS >= 3 at ")
    assert mutations(env) == []


def test_regional_quota_of_zero_skips_to_a_region_with_quota(env):
    env.set_quota("NVIDIA_T4_GPUS", 0, region="us-central1")
    r = run("up", "box", "--gpu", "t4", "--yes", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["zone"] == "us-east1-c"
    assert [(a["zone"], a["outcome"]) for a in out["zones_tried"]] == [(ZONE, "quota"), ("us-east1-c", "created")]
    assert f"{ZONE}: Quota NVIDIA_T4_GPUS in us-central1 is 0, so no VM with this GPU can be created. Skipping region us-central1." in r.stderr
    # no insert was sent into the region without quota; one list call read the other regions
    assert [c.path.split("/zones/")[1].split("/")[0] for c in env.calls("compute.instances.insert")] == ["us-east1-c"]
    assert len(env.calls("compute.regions.list")) == 1


def test_regional_usage_counts_too(env):
    env.set_quota("NVIDIA_T4_GPUS", 4, region="us-central1")
    env.add_instance("other", zone="us-central1-b", gpu=("nvidia-tesla-t4", 4), labels={})
    r = run("up", "box", "--gpu", "t4", "--yes", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["zone"] == "us-east1-c"
    assert "Quota NVIDIA_T4_GPUS in us-central1 is 4 with 4 in use: no room for 1 more. Skipping region us-central1." in r.stderr


def test_no_candidate_region_has_quota(env):
    for region in REGIONS:
        env.set_quota("NVIDIA_T4_GPUS", 0, region=region)
    r = run("up", "box", "--gpu", "t4", "--yes")
    assert r.exit_code == 1
    assert r.stderr.splitlines()[-1] == (
        "Error: Quota NVIDIA_T4_GPUS in us-central1 is 0, so no VM with this GPU can be created. "
        "No other region gcpdl would try has room either (europe-west4, us-east1). "
        f"Request NVIDIA_T4_GPUS >= 1 in us-central1 at {PAGE}/nvidia_t4_gpus {WAIT}"
    )
    assert_nothing_created(env)


@pytest.mark.parametrize("gpu, metric", [("l4", "NVIDIA_L4_GPUS"), ("a100", "NVIDIA_A100_GPUS"),
                                         ("a100-80gb", "NVIDIA_A100_80GB_GPUS"), ("h100", "NVIDIA_H100_GPUS")])
def test_built_in_gpus_use_their_metric(env, gpu, metric):
    for region in REGIONS:
        env.set_quota(metric, 0, region=region)
    r = run("up", "box", "--gpu", gpu, "--yes")
    assert r.exit_code == 1
    assert r.stderr.splitlines()[-1].startswith(f"Error: Quota {metric} in us-central1 is 0, so no VM with this GPU can be created.")
    assert_nothing_created(env)


def test_spot_checks_the_preemptible_quota(env):
    for region in REGIONS:
        env.set_quota("PREEMPTIBLE_NVIDIA_T4_GPUS", 1, region=region, usage=1)
    assert run("up", "box", "--gpu", "t4", "--yes", "--dry-run").exit_code == 0  # the plan reads no quota
    r = run("up", "box", "--gpu", "t4", "--spot", "--yes")
    assert r.exit_code == 1
    assert r.stderr.splitlines()[-1].startswith(
        "Error: Quota PREEMPTIBLE_NVIDIA_T4_GPUS in us-central1 is 1 with 1 in use: no room for 1 more. "
        "No other region gcpdl would try has room either (europe-west4, us-east1). Request PREEMPTIBLE_NVIDIA_T4_GPUS >= 2 in us-central1")
    assert_nothing_created(env)
    # the standard quota does not gate a Spot VM that has preemptible quota, nor the other way round
    for region in REGIONS:
        env.set_quota("PREEMPTIBLE_NVIDIA_T4_GPUS", 4, region=region)
        env.set_quota("NVIDIA_T4_GPUS", 0, region=region)
    r = run("up", "box", "--gpu", "t4", "--spot", "--yes", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["zone"] == ZONE


def test_spot_without_preemptible_quota_uses_the_standard_quota(env):
    for region in REGIONS:
        env.set_quota("PREEMPTIBLE_NVIDIA_T4_GPUS", 0, region=region)
    r = run("up", "box", "--gpu", "t4", "--spot", "--yes", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["zone"] == ZONE
    env.requests.clear()
    assert run("down", "box", "--yes").exit_code == 0
    env.set_quota("NVIDIA_T4_GPUS", 0, region="us-central1")
    env.set_quota("NVIDIA_T4_GPUS", 0, region="us-east1")
    env.set_quota("NVIDIA_T4_GPUS", 0, region="europe-west4")
    r = run("up", "box", "--gpu", "t4", "--spot", "--yes")
    assert r.exit_code == 1
    assert r.stderr.splitlines()[-1].startswith(  # the quota to ask for is the preemptible one
        "Error: Quota PREEMPTIBLE_NVIDIA_T4_GPUS in us-central1 is 0, so no VM with this GPU can be created.")


def test_a_data_disk_pins_the_region(env):
    """The data disk is zonal: a region without quota cannot be skipped."""
    assert run("up", "box", "--gpu", "t4", "--yes", "--data-disk", "100").exit_code == 0
    assert run("down", "box", "--yes").exit_code == 0
    env.set_quota("NVIDIA_T4_GPUS", 0, region="us-central1")
    env.requests.clear()
    r = run("up", "box", "--gpu", "t4", "--yes", "--data-disk", "100")
    assert r.exit_code == 1
    assert r.stderr.splitlines()[-1].startswith("Error: Quota NVIDIA_T4_GPUS in us-central1 is 0, so no VM with this GPU can be created. Request ")
    assert mutations(env) == []
    assert [d["name"] for d in env.disks()] == ["box-data"]


def test_cpu_only_reads_no_gpu_quota(env):
    env.set_quota("GPUS_ALL_REGIONS", 0)
    assert run("up", "box", "--cpu-only", "--yes").exit_code == 0
    # the project is read once anyway (OS Login); no region is read for quota
    assert len(env.calls("compute.projects.get")) == 1 and env.calls("compute.regions.get") == []
