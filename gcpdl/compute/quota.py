"""GPU quota, read before `up` creates anything (issue 8 §5) and reported the same way by `doctor`.

Two quotas gate a GPU VM: GPUS_ALL_REGIONS (project, GET projects/P) and the GPU's regional
metric (GET regions/R), e.g. NVIDIA_T4_GPUS; A2/A3/G2 machines count their built-in GPUs under
NVIDIA_A100_GPUS, NVIDIA_A100_80GB_GPUS, NVIDIA_H100_GPUS, NVIDIA_L4_GPUS. Spot VMs use the
PREEMPTIBLE_ metric when the project has that quota, and the standard one when it is 0
(https://cloud.google.com/compute/resource-usage#preemptible_quota). Usage counts: a limit of 1
with 1 in use leaves no room. A quota that cannot be read is not guessed at: the insert's own
quota error (gcpdl.compute.errors.quota_error) still explains it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gcpdl.compute.errors import quota_shortfall
from gcpdl.deadline import Deadline
from gcpdl.errors import PermissionDenied, QuotaExceeded
from gcpdl.pricing import region_of
from gcpdl.spec import GPUS, VmSpec

if TYPE_CHECKING:  # pragma: no cover
    from gcpdl.compute.adapter import Compute

ALL_REGIONS = "GPUS_ALL_REGIONS"
Quotas = list[dict[str, Any]]


def limit_usage(quotas: Quotas | None, metric: str) -> tuple[float, float] | None:
    for q in quotas or []:
        if q.get("metric") == metric:
            return float(q.get("limit", 0)), float(q.get("usage", 0))
    return None


def project_shortfall(project: str, quotas: Quotas | None, need: int) -> QuotaExceeded | None:
    found = limit_usage(quotas, ALL_REGIONS)
    if found is None or found[1] + need <= found[0]:
        return None
    return quota_shortfall(project, ALL_REGIONS, None, found[0], found[1], need)


def regional_metric(gpu: str, spot: bool, quotas: Quotas | None) -> str:
    """The metric a VM with this GPU draws from in a region with these quotas."""
    metric = GPUS[gpu].quota_metric
    if spot:
        pre = limit_usage(quotas, "PREEMPTIBLE_" + metric)
        if pre is None or pre[0] > 0:
            return "PREEMPTIBLE_" + metric
    return metric


def region_shortfall(project: str, region: str, quotas: Quotas | None, gpu: str, spot: bool, need: int) -> QuotaExceeded | None:
    metric = regional_metric(gpu, spot, quotas)
    found = limit_usage(quotas, metric)
    if found is None or found[1] + need <= found[0]:
        return None
    # Spot with neither quota: ask for the preemptible one, which keeps Spot off the standard pool
    metric = "PREEMPTIBLE_" + GPUS[gpu].quota_metric if spot else metric
    return quota_shortfall(project, metric, region, found[0], found[1], need)


def read_region(compute: Compute, region: str, deadline: Deadline) -> Quotas | None:
    try:
        info = compute.get_or_none(f"/compute/v1/projects/{compute.project}/regions/{region}", deadline)
    except PermissionDenied:
        return None
    return None if info is None else info.get("quotas") or []


def read_all_regions(compute: Compute, deadline: Deadline) -> dict[str, Quotas]:
    """Every region's quotas in one list call (only when the first region has no room)."""
    try:
        page = compute.get(f"/compute/v1/projects/{compute.project}/regions", deadline)
    except PermissionDenied:
        return {}
    return {r["name"]: r.get("quotas") or [] for r in page.get("items") or [] if r.get("name")}


@dataclass
class Placement:
    """Where `up` may try, given quota: ``first`` then ``queue``; ``skipped`` says why the zone
    `up` would have started in was passed over ((zone, message) or None)."""

    first: str
    queue: list[str]
    skipped: tuple[str, str] | None = None
    regions_without: list[str] = field(default_factory=list)


def place(compute: Compute, spec: VmSpec, first: str, queue: list[str], project_quotas: Quotas | None,
          known: dict[str, Quotas | None], deadline: Deadline) -> Placement:
    """Raise QuotaExceeded (doctor's message) when no candidate zone's region has GPU quota for
    the VM; else the zones to try, regions without quota dropped. ``known``: region -> quotas
    already read (the pre-flight reads the first zone's region)."""
    project, need = compute.project, spec.gpu_count
    assert spec.gpu is not None
    short = project_shortfall(project, project_quotas, need)
    if short is not None:
        raise short
    region = region_of(first)
    if region not in known:  # e.g. a data disk pinned the VM to another region
        known[region] = read_region(compute, region, deadline)
    short = region_shortfall(project, region, known[region], spec.gpu, spec.spot, need)
    if short is None:
        return Placement(first, queue)
    others = [z for z in queue if region_of(z) != region]
    if others and any(region_of(z) not in known for z in others):
        known.update(read_all_regions(compute, deadline))
    without = {region} | {region_of(z) for z in others
                          if region_shortfall(project, region_of(z), known.get(region_of(z)), spec.gpu, spec.spot, need)}
    ok = [z for z in others if region_of(z) not in without]
    if not ok:
        if len(without) > 1:
            short.message += f" No other region gcpdl would try has room either ({', '.join(sorted(without - {region}))})."
        raise short
    return Placement(ok[0], ok[1:], (first, short.message), sorted(without))


__all__ = ["ALL_REGIONS", "Placement", "limit_usage", "place", "project_shortfall", "read_all_regions",
           "read_region", "region_shortfall", "regional_metric"]
