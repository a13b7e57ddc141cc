"""Which zones can take the VM, and in what order to try them after a stockout."""

from __future__ import annotations

from gcpdl.compute.adapter import Compute
from gcpdl.deadline import Deadline
from gcpdl.errors import InvalidInput
from gcpdl.pricing import region_of
from gcpdl.spec import VmSpec

MAX_ZONE_ATTEMPTS = 6  # a stockout rarely clears by trying every zone on the planet


def accelerator_zones(compute: Compute, accelerator: str, deadline: Deadline) -> dict[str, int]:
    """zone -> maximumCardsPerInstance for one accelerator type (one aggregatedList call)."""
    found = compute.aggregated("acceleratorTypes", deadline, filter=f"name = {accelerator}")
    out: dict[str, int] = {}
    for zone, items in found.items():
        for item in items:
            if item.get("name") == accelerator:
                out[zone] = int(item.get("maximumCardsPerInstance") or 0)
    return out


def _nearness(zone: str, home: str) -> tuple:
    """Same region first, then the same geography (us-, europe-...), then by name."""
    return (region_of(zone) != region_of(home), zone.split("-")[0] != home.split("-")[0], zone)


def check_zone(spec: VmSpec, zone: str, offered: dict[str, int]) -> None:
    """GPU offered in the zone, and not more of them than the zone allows per VM."""
    if not spec.gpu:
        return
    if zone not in offered:
        others = sorted(offered, key=lambda z: _nearness(z, zone))[:5]
        hint = f" Zones that offer it: {', '.join(others)}." if others else " No zone offers it to this project."
        raise InvalidInput(f"GPU {spec.gpu} ({spec.accelerator}) is not offered in zone {zone}.{hint}")
    if spec.gpu_count > offered[zone]:
        raise InvalidInput(f"Zone {zone} allows at most {offered[zone]} {spec.gpu} GPUs per VM, not {spec.gpu_count}.")


def next_zones(
    first: str,
    candidates: list[str],
    offered: dict[str, int] | None,
    spec: VmSpec,
) -> list[str]:
    """The default order after ``first``: the configured candidates, then (for a GPU) every
    other zone offering it with room for the count, same region first."""
    order: list[str] = []
    for z in candidates:
        if z != first and z not in order and (offered is None or (z in offered and offered[z] >= spec.gpu_count)):
            order.append(z)
    if offered is not None:
        rest = sorted(
            (z for z, cards in offered.items() if cards >= spec.gpu_count and z != first and z not in order),
            key=lambda z: _nearness(z, first),
        )
        order.extend(rest)
    return order


def reorder(queue: list[str], zones_available: list[str], tried: set[str], skip_regions: set[str]) -> list[str]:
    """Put the zones an error said have capacity first; drop tried zones and skipped regions."""
    head = [z for z in zones_available if z in queue]
    tail = [z for z in queue if z not in head]
    return [z for z in head + tail if z not in tried and region_of(z) not in skip_regions]
