"""Prices (STUB: issue 5 replaces this with a dated, sourced table in gcpdl/data/).

The interface is what `up`, `status`, `down` and `cost` call; keep it stable.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HourlyPrice:
    compute: float  # machine type (vCPU + memory), $/h
    gpu: float  # attached or built-in accelerators, $/h
    disk: float  # boot + data disks, $/h (monthly price / 730)
    spot: bool

    @property
    def total(self) -> float:
        return round(self.compute + self.gpu + self.disk, 4)


def region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def hourly_price(
    machine_type: str,
    gpu: str | None,
    gpu_count: int,
    region: str,
    spot: bool = False,
    disks: tuple[tuple[int, str], ...] = (),
) -> HourlyPrice:
    """``gpu`` is the catalogue key (t4, v100, l4, a100, a100-80gb, h100, ...); ``disks`` is a
    tuple of (size_gb, disk_type) pairs."""
    gpu_rates = {"t4": 0.35, "p4": 0.60, "p100": 1.46, "v100": 2.48, "l4": 0.56, "a100": 2.93, "a100-80gb": 3.93, "h100": 11.06}
    gpu_cost = gpu_rates.get(gpu or "", 0.0) * gpu_count
    compute = 0.19
    disk = sum(size * 0.10 for size, _ in disks) / 730.0
    if spot:
        gpu_cost *= 0.4
        compute *= 0.4
    return HourlyPrice(round(compute, 4), round(gpu_cost, 4), round(disk, 4), spot)


def disk_monthly(size_gb: int, disk_type: str, region: str) -> float:
    return round(size_gb * 0.10, 2)
