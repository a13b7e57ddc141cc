"""Prices from a dated, sourced table shipped in the package (gcpdl/data/prices.json).

The interface is what `up`, `status`, `down` and `cost` call; keep it stable:
``hourly_price(machine_type, gpu, gpu_count, region, spot, disks)``, ``disk_monthly``,
``region_of``, ``data_disk_reminder``. Everything is list price in USD with no discounts; the
table says where each figure came from and on what date, and ``prices_note()`` says so to users.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

HOURS_PER_MONTH = 730.0  # Google's own convention for monthly prices
# Spot discount to assume where the table has no Spot figure (GPU Spot prices have sat at about
# 60% off on-demand): marked estimated.
FALLBACK_SPOT_FRACTION = 0.4
CUSTOM_PREMIUM = 1.05  # custom machine shapes cost ~5% more per vCPU and GB than predefined ones
DEFAULT_MEMORY_PER_VCPU = 4.0  # GB, for an unlisted family (estimate)
_N1_RE = re.compile(r"^n1-(standard|highmem|highcpu)-(\d+)$")
_CUSTOM_RE = re.compile(r"^(?:(n1|n2|n2d|e2)-)?custom-(\d+)-(\d+)(?:-ext)?$")
_GENERIC_RE = re.compile(r"^([a-z][a-z0-9]*)-[a-z]+-(\d+)$")


@dataclass(frozen=True)
class HourlyPrice:
    compute: float  # machine type (vCPU + memory), $/h
    gpu: float  # attached or built-in accelerators, $/h
    disk: float  # boot + data disks, $/h (monthly price / 730)
    spot: bool
    estimated: bool = False  # a region, machine or Spot figure not in the table was extrapolated
    scratch: float = 0.0  # local SSDs, $/h: discarded (and no longer billed) when the VM stops

    @property
    def total(self) -> float:
        return round(self.compute + self.gpu + self.scratch + self.disk, 4)

    @property
    def running(self) -> float:
        """What stops when the VM stops: machine + GPUs + local SSDs (persistent disks bill either way)."""
        return round(self.compute + self.gpu + self.scratch, 4)


@lru_cache(maxsize=1)
def table() -> dict[str, Any]:
    return json.loads((Path(__file__).parent / "data" / "prices.json").read_text())


def prices_date() -> str:
    return table()["retrieved"]


def prices_note() -> str:
    return f"List prices from gcpdl's table dated {prices_date()} (USD, no discounts); Spot prices move daily."


def region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def region_factor(region: str) -> tuple[float, bool]:
    """(multiplier on us-central1 prices, estimated?)."""
    regions = table()["regions"]
    if region in regions:
        return float(regions[region]), False
    return float(table()["unlisted_region_factor"]), True


def gpu_key_for_accelerator(accelerator_type: str) -> str | None:
    """Price-table key for an accelerator type name or URL (.../acceleratorTypes/nvidia-l4)."""
    name = accelerator_type.rstrip("/").rsplit("/", 1)[-1]
    for key, entry in table()["gpus"].items():
        if entry["accelerator"] == name:
            return key
    return None


def _gpu_rate(gpu: str, spot: bool) -> tuple[float, bool]:
    entry = table()["gpus"].get(gpu)
    if entry is None or entry.get("ondemand") is None:
        return 0.0, True  # unknown GPU (or one only sold bundled): cannot price it
    if spot:
        if entry.get("spot") is not None:
            return float(entry["spot"]), False
        return float(entry["ondemand"]) * FALLBACK_SPOT_FRACTION, True
    return float(entry["ondemand"]), False


def _shape(machine_type: str) -> tuple[str, float, float, bool] | None:
    """(family, vCPUs, memory GB, estimated) for a machine type, None when unknown."""
    t = table()
    m = _N1_RE.match(machine_type)
    if m:
        vcpus = int(m.group(2))
        return "n1", vcpus, vcpus * float(t["shapes"][f"n1-{m.group(1)}"]), False
    if machine_type in t["shapes"] and isinstance(t["shapes"][machine_type], list):
        vcpus, mem = t["shapes"][machine_type]
        return machine_type.split("-", 1)[0], float(vcpus), float(mem), False
    m = _CUSTOM_RE.match(machine_type)
    if m:
        return (m.group(1) or "n1"), float(m.group(2)), int(m.group(3)) / 1024.0, m.group(1) not in (None, "n1")
    m = _GENERIC_RE.match(machine_type)
    if m:
        vcpus = int(m.group(2))
        return m.group(1), float(vcpus), vcpus * DEFAULT_MEMORY_PER_VCPU, True
    return None


def _machine_rate(machine_type: str, spot: bool) -> tuple[float, bool]:
    shape = _shape(machine_type)
    if shape is None:
        return 0.0, True
    family, vcpus, mem, estimated = shape
    families = table()["families"]
    rates = families.get(family)
    if rates is None:
        rates, estimated = families["n1"], True  # an unlisted family: N1 rates as a rough guide
    prefix = "spot_" if spot else ""
    price = vcpus * rates[prefix + "vcpu"] + mem * rates[prefix + "memory"]
    if "custom" in machine_type:
        price *= CUSTOM_PREMIUM
    return price, estimated


def hourly_price(
    machine_type: str,
    gpu: str | None,
    gpu_count: int,
    region: str,
    spot: bool = False,
    disks: tuple[tuple[int, str], ...] = (),
) -> HourlyPrice:
    """``gpu`` is the catalogue key (t4, v100, l4, a100, a100-80gb, h100, ...) of attached GPUs;
    machine types with GPUs built in (g2, a2, a3) are priced with their own GPUs whatever ``gpu``
    says. ``disks`` is a tuple of (size_gb, disk_type) pairs."""
    t = table()
    factor, estimated = region_factor(region)
    bundled = t["bundled"].get(machine_type)
    if bundled is not None:
        compute, gpu_cost = 0.0, float(bundled["spot" if spot else "ondemand"])
    else:
        compute, est = _machine_rate(machine_type, spot)
        estimated |= est
        builtin = t["builtin_gpus"].get(machine_type)
        if builtin is not None:
            gpu, gpu_count = builtin[0], int(builtin[1])
        gpu_cost = 0.0
        if gpu and gpu_count:
            rate, est = _gpu_rate(gpu, spot)
            estimated |= est
            gpu_cost = rate * gpu_count
    disk = scratch = 0.0
    for size, dtype, *perf in disks:
        monthly, est = _disk_monthly(size, dtype, region, perf[0] if perf else None)
        estimated |= est
        if dtype == "local-ssd":
            scratch += monthly / HOURS_PER_MONTH
        else:
            disk += monthly / HOURS_PER_MONTH
    return HourlyPrice(round(compute * factor, 4), round(gpu_cost * factor, 4), round(disk, 4), spot, estimated,
                       round(scratch, 4))


def _disk_monthly(size_gb: int, disk_type: str, region: str, mibps: int | None = None) -> tuple[float, bool]:
    """Capacity, plus Hyperdisk Balanced throughput provisioned above what it includes."""
    factor, estimated = region_factor(region)
    t = table()
    rates = t["disks_gb_month"]
    if disk_type in rates:
        rate = float(rates[disk_type])
        estimated |= disk_type in t.get("estimated_disk_types", [])
    else:
        rate, estimated = float(rates["pd-balanced"]), True
    price = size_gb * rate
    perf = t["hyperdisk_balanced_performance"]
    if disk_type == "hyperdisk-balanced" and mibps and mibps > perf["included_mibps"]:
        price += (mibps - perf["included_mibps"]) * float(perf["mibps_month"])
        estimated |= bool(perf.get("estimated"))
    return price * factor, estimated


def disk_monthly(size_gb: int, disk_type: str, region: str, mibps: int | None = None) -> float:
    return round(_disk_monthly(size_gb, disk_type, region, mibps)[0], 2)


def disk_monthly_estimated(size_gb: int, disk_type: str, region: str, mibps: int | None = None) -> tuple[float, bool]:
    """(monthly price, estimated?) for the plan's disk lines."""
    price, est = _disk_monthly(size_gb, disk_type, region, mibps)
    return round(price, 2), est


def data_disk_reminder(size_gb: int, disk_type: str, region: str) -> str:
    """What `down` says about the data disk it keeps."""
    monthly = disk_monthly(size_gb, disk_type, region)
    return (
        f"The data disk ({size_gb} GB {disk_type}) is kept and costs about ${monthly:.2f}/month "
        f"(${monthly / HOURS_PER_MONTH * 24:.2f}/day) until you delete it."
    )
