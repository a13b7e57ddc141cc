"""The price table against published figures (us-central1 list prices unless noted).

Figures checked, with where they were published:
- n1-standard-8 on-demand: $0.379998/h (cloud.google.com/compute/vm-instance-pricing, N1 predefined:
  $0.031611 per vCPU-hour + $0.004237 per GB-hour, 8 vCPU + 30 GB).
- NVIDIA T4: $0.35 per GPU-hour; V100: $2.48; P100: $1.46; P4: $0.60 (cloud.google.com/compute/gpus-pricing).
- a2-highgpu-1g: $3.673385/h (vm-instance-pricing, accelerator-optimized A2: 12 vCPU + 85 GB + 1 A100 40GB at $2.933908).
- g2-standard-4: $0.70683/h and g2-standard-8: $0.85366/h (vm-instance-pricing, G2 with one L4).
- a3-highgpu-1g: $10.9791/h on-demand, $6.571 Spot (Cloud Billing catalog SKUs summed, 2026-09-26).
- A2 Spot: $0.01264 per vCPU-hour, $0.001695 per GB-hour (cloud.google.com/spot-vms/pricing).
- pd-standard $0.04, pd-balanced $0.10, pd-ssd $0.17 per GB-month (cloud.google.com/compute/disks-image-pricing).
"""

from __future__ import annotations

import re

import pytest

from gcpdl import pricing


def test_table_is_dated_and_sourced():
    t = pricing.table()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", t["retrieved"])
    assert all(src.startswith(("https://", "Cloud Billing")) for src in t["sources"].values())
    assert pricing.prices_date() in pricing.prices_note()


@pytest.mark.parametrize(
    "machine, gpu, count, published",
    [
        ("n1-standard-8", None, 0, 0.379998),
        ("n1-standard-8", "t4", 1, 0.379998 + 0.35),
        ("n1-standard-8", "v100", 1, 0.379998 + 2.48),
        ("n1-standard-16", "p100", 2, 0.759996 + 2 * 1.46),
        ("n1-standard-8", "p4", 1, 0.379998 + 0.60),
        ("a2-highgpu-1g", "a100", 1, 3.673385),
        ("g2-standard-4", "l4", 1, 0.70683),
        ("g2-standard-8", "l4", 1, 0.85366),
        ("a3-highgpu-1g", "h100", 1, 10.9791),
    ],
)
def test_published_on_demand_prices(machine, gpu, count, published):
    price = pricing.hourly_price(machine, gpu, count, "us-central1")
    assert price.total == pytest.approx(published, abs=0.001)
    assert not price.estimated and not price.spot


def test_builtin_gpus_come_from_the_machine_type():
    # gpu=None or a wrong count cannot change what an a2-highgpu-2g carries
    assert pricing.hourly_price("a2-highgpu-2g", None, 0, "us-central1").gpu == pytest.approx(2 * 2.933908, abs=1e-3)
    assert pricing.hourly_price("a2-highgpu-2g", "a100", 1, "us-central1").gpu == pytest.approx(2 * 2.933908, abs=1e-3)


def test_spot_prices():
    a2 = pricing.hourly_price("a2-highgpu-1g", "a100", 1, "us-central1", spot=True)
    assert a2.compute == pytest.approx(12 * 0.01264 + 85 * 0.001695, abs=1e-3)
    assert a2.spot and a2.total < pricing.hourly_price("a2-highgpu-1g", "a100", 1, "us-central1").total / 2
    assert pricing.hourly_price("a3-highgpu-1g", "h100", 1, "us-central1", spot=True).total == pytest.approx(6.571)
    t4 = pricing.hourly_price("n1-standard-8", "t4", 1, "us-central1", spot=True)
    assert t4.gpu == pytest.approx(0.14) and t4.total < 0.35


def test_disks_per_gb_month_and_per_hour():
    assert pricing.disk_monthly(100, "pd-standard", "us-central1") == 4.00
    assert pricing.disk_monthly(100, "pd-balanced", "us-central1") == 10.00
    assert pricing.disk_monthly(100, "pd-ssd", "us-central1") == 17.00
    p = pricing.hourly_price("n1-standard-8", "t4", 1, "us-central1", disks=((100, "pd-balanced"), (200, "pd-ssd")))
    assert p.disk == pytest.approx((10 + 34) / 730, abs=1e-4)
    assert p.running == pytest.approx(0.73, abs=1e-3)


def test_regions_listed_and_unlisted():
    base = pricing.hourly_price("n1-standard-8", "t4", 1, "us-central1").total
    for region in ("us-east1", "us-west1"):
        assert pricing.hourly_price("n1-standard-8", "t4", 1, region).total == base
    eu = pricing.hourly_price("n1-standard-8", "t4", 1, "europe-west4")
    asia = pricing.hourly_price("n1-standard-8", "t4", 1, "asia-east1")
    assert base < eu.total < asia.total and not eu.estimated and not asia.estimated
    far = pricing.hourly_price("n1-standard-8", "t4", 1, "me-central2")
    assert far.estimated and far.total > base
    assert pricing.region_of("europe-west4-a") == "europe-west4"


def test_unknown_machine_family_is_estimated_not_an_error():
    p = pricing.hourly_price("e2-standard-4", None, 0, "us-central1")
    assert p.estimated and p.compute > 0


def test_accelerator_names_map_to_table_keys():
    assert pricing.gpu_key_for_accelerator("projects/p/zones/us-central1-a/acceleratorTypes/nvidia-tesla-t4") == "t4"
    assert pricing.gpu_key_for_accelerator("nvidia-l4") == "l4"
    assert pricing.gpu_key_for_accelerator("nvidia-b200") is None


def test_every_catalogue_gpu_and_default_machine_has_a_price():
    from gcpdl.spec import GPUS

    for gpu in GPUS.values():
        for count, machine in gpu.machines.items():
            price = pricing.hourly_price(machine, gpu.key, count, "us-central1")
            assert price.gpu > 0 and not price.estimated, (gpu.key, machine)


def test_data_disk_reminder():
    assert pricing.data_disk_reminder(200, "pd-balanced", "us-central1") == (
        "The data disk (200 GB pd-balanced) is kept and costs about $20.00/month ($0.66/day) until you delete it."
    )
