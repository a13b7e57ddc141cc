"""How fast a VM's disk can take a dataset: GCE's published figures (gcpdl/data/disks.json, dated
and sourced like the price table) and the arithmetic on them.

For a VM shape and a disk (type, size, provisioned throughput, or N local SSDs) ``estimate``
says the expected write rate and which bound sets it: the disk's size, the disk type's cap for
the VM's vCPUs, the VM's network cap, or the local SSDs. ``seconds_for`` turns bytes into
time. Pure and fast (no Google import); ``vm_storage`` reads the instance for `sync --on`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

MIB = 1 << 20
PD_TYPES = ("pd-standard", "pd-balanced", "pd-ssd")
DATA_DISK_TYPES = ("pd-balanced", "pd-ssd", "pd-standard", "hyperdisk-balanced")
HYPERDISK = "hyperdisk-balanced"
LOCAL_SSD = "local-ssd"
DATA_MOUNT = "/data"
SCRATCH_MOUNT = "/scratch"


@lru_cache(maxsize=1)
def table() -> dict[str, Any]:
    return json.loads((Path(__file__).parent / "data" / "disks.json").read_text())


def table_date() -> str:
    return str(table()["retrieved"])


def family(machine_type: str) -> str:
    return machine_type.split("-", 1)[0]


def vcpus(machine_type: str) -> int | None:
    from gcpdl.pricing import _shape  # the one parser of machine shapes (N1, custom, G2/A2 table)

    if machine_type.startswith("a3-highgpu-"):  # bundled in the price table, not in its shapes
        return {"1g": 26, "2g": 52, "4g": 104, "8g": 208}.get(machine_type.rsplit("-", 1)[-1])
    shape = _shape(machine_type)
    return int(shape[1]) if shape else None


def _tier(tiers: list[list[float]], n: int) -> float:
    """The value of the last [from, value] tier whose `from` is <= n."""
    value = tiers[0][1]
    for start, v in tiers:
        if n >= start:
            value = v
    return float(value)


# --- what a machine supports --------------------------------------------------------------
def hyperdisk_supported(machine_type: str) -> bool:
    return family(machine_type) in table()["hyperdisk_balanced"]["families"]


def hyperdisk_families() -> list[str]:
    return [f.upper() for f in table()["hyperdisk_balanced"]["families"]]


def local_ssd_bundled(machine_type: str) -> int:
    """Local SSDs that come with the machine type itself (A2 Ultra, A3): 0 for the others."""
    return int(table()["local_ssd"]["bundled"].get(machine_type, 0))


def local_ssd_counts(machine_type: str) -> list[int]:
    """How many local SSDs `--local-ssd` may ask for on this machine type ([] for none)."""
    ls = table()["local_ssd"]
    bundled = local_ssd_bundled(machine_type)
    if bundled:
        return [bundled]
    if machine_type in ls["counts"]:
        return list(ls["counts"][machine_type])
    return list(ls["counts"].get(family(machine_type), []))


def hyperdisk_range() -> tuple[int, int]:
    h = table()["hyperdisk_balanced"]
    return int(h["min_mibps"]), int(h["max_mibps"])


# --- the arithmetic -----------------------------------------------------------------------
@dataclass(frozen=True)
class Disk:
    """Where the data lands: a persistent disk (type, size, provisioned MiB/s for Hyperdisk) or
    ``count`` local SSDs striped."""

    kind: str  # pd-balanced, pd-ssd, pd-standard, hyperdisk-balanced, local-ssd
    size_gb: int = 0
    provisioned_mibps: int | None = None
    count: int = 0  # local SSDs
    name: str = ""  # the disk's name (or "local SSD") for messages

    @property
    def label(self) -> str:
        if self.kind == LOCAL_SSD:
            return f"{self.count} x 375 GB local SSD"
        extra = f", {self.provisioned_mibps} MiB/s provisioned" if self.provisioned_mibps else ""
        return f"{self.size_gb:,} GB {self.kind}{extra}"


@dataclass(frozen=True)
class Estimate:
    mib_s: float  # expected write rate
    bound: str  # "disk size", "disk type cap", "local SSD", "provisioned throughput", "network"
    bounds: dict[str, float] = field(default_factory=dict)  # every bound considered, MiB/s
    estimated: bool = False  # a figure the table flags as unverified, or an unknown machine

    @property
    def kind(self) -> str:
        """disk-bound or network-bound: what the user can change."""
        return "network-bound" if self.bound == "network" else "disk-bound"

    def as_dict(self) -> dict[str, Any]:
        return {"mib_per_s": round(self.mib_s, 1), "mb_per_s": round(self.mib_s * MIB / 1e6, 1), "bound": self.bound,
                "kind": self.kind, "bounds_mib_per_s": {k: round(v, 1) for k, v in self.bounds.items()},
                "estimated": self.estimated, "table_date": table_date()}


def network_mibps(machine_type: str) -> tuple[float, bool]:
    """(the VM's network cap in MiB/s, estimated?) from its default egress bandwidth."""
    net = table()["network_gbps"]
    if machine_type in net:
        gbps, est = float(net[machine_type]), True
    elif family(machine_type) == "n1" and vcpus(machine_type):
        gbps, est = _tier(net["n1_by_vcpus"], vcpus(machine_type) or 1), False
    else:
        gbps, est = float(net["default"]), True
    return gbps * 1e9 / 8 / MIB, est


def disk_bounds(machine_type: str, disk: Disk) -> dict[str, float]:
    """Every disk-side bound on the write rate, MiB/s."""
    t = table()
    n = vcpus(machine_type) or 1
    if disk.kind == LOCAL_SSD:
        by = t["local_ssd"]["write_mibps_by_count"]
        counts = sorted(int(c) for c in by)
        at = max((c for c in counts if c <= disk.count), default=counts[0])
        # between listed counts, devices add linearly; never beyond the largest figure
        rate = float(by[str(at)]) / at * disk.count
        return {"local SSD": min(rate, max(float(v) for v in by.values()))}
    if disk.kind == HYPERDISK:
        h = t["hyperdisk_balanced"]
        caps = h["vm_cap_mibps"]
        return {"provisioned throughput": float(disk.provisioned_mibps or h["default_mibps"]),
                "disk type cap": float(caps.get(family(machine_type), caps["default"]))}
    # an unlisted type (pd-extreme) is estimated with pd-balanced's figures; estimate() flags it
    pd = t["persistent_disk"].get(disk.kind) or t["persistent_disk"]["pd-balanced"]
    egress, _ = network_mibps(machine_type)
    return {
        "disk size": pd["baseline_mibps"] + pd["write_mibps_per_gib"] * disk.size_gb,
        "disk type cap": _tier(pd["write_cap_by_vcpus"], n),
        # a PD write leaves the VM as network egress, about 1.16 times its bytes
        "network egress for disk writes": egress / float(t["pd_egress_multiplier"]),
    }


def estimate(machine_type: str, disk: Disk) -> Estimate:
    bounds = disk_bounds(machine_type, disk)
    net, net_est = network_mibps(machine_type)
    bounds["network"] = net
    bound = min(bounds, key=lambda k: bounds[k])
    if bound == "network egress for disk writes":
        bound = "network"
    estimated = (net_est or vcpus(machine_type) is None or disk.kind in (LOCAL_SSD, HYPERDISK) or bound == "disk type cap"
                 or disk.kind not in (*PD_TYPES, LOCAL_SSD, HYPERDISK))
    return Estimate(min(bounds.values()), bound, bounds, estimated)


def seconds_for(nbytes: int, mib_s: float) -> float:
    return nbytes / (mib_s * MIB) if mib_s > 0 else float("inf")


def human_time(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _bound_text(est: Estimate) -> str:
    if est.bound == "network":
        return "network-bound"
    return f"disk-bound ({est.bound})"


# --- the two lines `sync --on` prints --------------------------------------------------------
REFERENCE_BYTES = 100 * 10**9


def expected_line(machine_type: str, disk: Disk, dest: str, est: Estimate) -> str:
    """Before: what bounds the write rate, and what 100 GB would take."""
    net = est.bounds["network"]
    about = "about " if est.estimated else ""
    where = disk.label if disk.kind == LOCAL_SSD else f"{disk.name}: {disk.label}"
    wiped = " Local SSD: after a stop the re-run is a full download." if disk.kind == LOCAL_SSD else ""
    return (f"Expected: {about}{est.mib_s:,.0f} MiB/s into {dest} ({where}), {_bound_text(est)}; "
            f"network cap {net:,.0f} MiB/s: 100 GB in {human_time(seconds_for(REFERENCE_BYTES, est.mib_s))}.{wiped}")


def alternative(machine_type: str, nbytes: int, current: Disk) -> tuple[Disk, Estimate] | None:
    """A faster disk for the same data on this machine: the bigger of a pd-ssd data disk of
    1,000 GB (or twice the data) and, where the machine allows, its local SSDs."""
    size = max(1000, -(-2 * nbytes // 10**9))
    options = [Disk("pd-ssd", size, name=f"a {size:,} GB pd-ssd data disk")]
    counts = local_ssd_counts(machine_type)
    fits = [c for c in counts if c * 375 * 10**9 >= nbytes]
    if fits:
        count = fits[-1] if local_ssd_bundled(machine_type) else max(fits[0], min(fits[-1], 8))
        options.append(Disk(LOCAL_SSD, count=count, name=f"{count} local SSD{'s' if count > 1 else ''} (up --local-ssd {count})"))
    best = None
    for d in options:
        e = estimate(machine_type, d)
        if e.mib_s > (best[1].mib_s if best else 0):
            best = (d, e)
    return best


def met_line(machine_type: str, disk: Disk, est: Estimate, nbytes: int, seconds: float) -> str:
    """After: which bound was met, and what a faster disk would have taken."""
    measured = nbytes / seconds / MIB if seconds > 0 else 0.0
    share = measured / est.mib_s if est.mib_s else 0.0
    if share >= 0.7:
        verdict = f"{est.kind} at {est.mib_s:,.0f} MiB/s ({measured:,.0f} MiB/s measured)"
    else:
        verdict = (f"{measured:,.0f} MiB/s measured, {share:.0%} of the {est.mib_s:,.0f} MiB/s {est.kind} limit: "
                   "bound by the objects (small files, the bucket) rather than the disk")
    alt = alternative(machine_type, nbytes, disk)
    tail = ""
    if alt and alt[1].mib_s > est.mib_s * 1.2 and nbytes > 0:
        tail = f"; {alt[0].name} would take about {human_time(seconds_for(nbytes, alt[1].mib_s))}"
    return f"{verdict}{tail}."


# --- which disk DEST is on, from the instance --------------------------------------------
def disk_for_dest(dest: str, instance: dict[str, Any], disks: dict[str, dict[str, Any]]) -> Disk:
    """``instance``: the instance resource (REST JSON); ``disks``: disk name -> disk resource for
    its persistent disks. /data is NAME-data, /scratch the local SSDs, anything else the boot disk."""
    name = instance.get("name", "")
    attached = instance.get("disks") or []
    path = dest.rstrip("/") or "/"
    scratch = [d for d in attached if d.get("type") == "SCRATCH"]
    if scratch and (path == SCRATCH_MOUNT or path.startswith(SCRATCH_MOUNT + "/")):
        return Disk(LOCAL_SSD, count=len(scratch), name="local SSD")
    wanted = None
    if path == DATA_MOUNT or path.startswith(DATA_MOUNT + "/"):
        wanted = f"{name}-data"
    boot = next((d for d in attached if d.get("boot")), None)
    chosen = None
    for d in attached:
        src = (d.get("source") or "").rsplit("/", 1)[-1]
        if wanted and src == wanted:
            chosen = src
    if chosen is None and boot is not None:
        chosen = (boot.get("source") or "").rsplit("/", 1)[-1]
    res = disks.get(chosen or "", {})
    kind = (res.get("type") or "pd-balanced").rsplit("/", 1)[-1]
    size = int(res.get("sizeGb") or 0)
    if not size:
        size = int(next((d.get("diskSizeGb") for d in attached if (d.get("source") or "").endswith("/" + str(chosen))), 0) or 0)
    mibps = int(res["provisionedThroughput"]) if res.get("provisionedThroughput") else None
    return Disk(kind, size, mibps, name=chosen or "boot disk")


def vm_storage(compute: Any, project: str, name: str, zone: str | None, dest: str, deadline: Any) -> tuple[str, Disk]:
    """(machine type, the disk DEST is on), read from the API: the instance, then that disk."""
    from gcpdl.compute import lookup
    from gcpdl.compute.requests import zone_path

    data = lookup.locate(compute, name, deadline, zone)
    if data is None:
        raise LookupError(name)
    vm_zone = (data.get("zone") or "").rsplit("/", 1)[-1]
    probe = disk_for_dest(dest, data, {})
    resources: dict[str, dict[str, Any]] = {}
    if probe.kind != LOCAL_SSD and probe.name:
        got = compute.get_or_none(f"{zone_path(project, vm_zone)}/disks/{probe.name}", deadline)
        if got:
            resources[probe.name] = got
    return (data.get("machineType") or "").rsplit("/", 1)[-1], disk_for_dest(dest, data, resources)


# --- for the plan ---------------------------------------------------------------------------
def plan_entry(machine_type: str, disk: Disk, monthly: float, estimated_price: bool) -> dict[str, Any]:
    est = estimate(machine_type, disk)
    return {"disk": disk.label, "type": disk.kind, "size_gb": disk.size_gb or disk.count * 375,
            "write": est.as_dict(), "price_per_month": round(monthly, 2),
            "price_per_hour": round(monthly / 730.0, 4), "price_estimated": estimated_price}


# --- `sync --on`: the line before and the line after -------------------------------------
EXPECT_DEADLINE = 20.0  # seconds for the two reads; the sync goes on without the line if they fail


@dataclass(frozen=True)
class Expectation:
    machine_type: str
    dest: str
    disk: Disk
    estimate: Estimate

    @property
    def before(self) -> str:
        return expected_line(self.machine_type, self.disk, self.dest, self.estimate)

    def after(self, nbytes: int, seconds: float, dry_run: bool = False) -> str | None:
        """None when nothing was (or would be) fetched: no rate to speak of."""
        if nbytes <= 0:
            return None
        if dry_run:
            about = human_time(seconds_for(nbytes, self.estimate.mib_s))
            return (f"At {self.estimate.mib_s:,.0f} MiB/s ({self.estimate.kind}) these {nbytes / 1e9:,.1f} GB "
                    f"would take about {about}.")
        return met_line(self.machine_type, self.disk, self.estimate, nbytes, seconds)

    def as_dict(self, after: str | None = None) -> dict[str, Any]:
        return {"machine_type": self.machine_type, "dest": self.dest, "disk": self.disk.name or self.disk.kind,
                "disk_type": self.disk.kind, "disk_gb": self.disk.size_gb or self.disk.count * 375,
                "local_ssd": self.disk.count, **self.estimate.as_dict(),
                "network_mib_per_s": round(self.estimate.bounds["network"], 1),
                "wiped_on_stop": self.disk.kind == LOCAL_SSD, "before": self.before, "after": after}


def expect_for_vm(factory: Any, name: str, zone: str | None, dest: str) -> Expectation | None:
    """The expectation for a sync into ``dest`` on the VM ``name``; None when its disks cannot be
    read (the sync itself does not depend on it)."""
    from gcpdl.compute.adapter import Compute
    from gcpdl.deadline import Deadline
    from gcpdl.errors import GcpdlError

    try:
        compute = Compute(factory, factory.project())
        machine, disk = vm_storage(compute, compute.project, name, zone, dest, Deadline(EXPECT_DEADLINE, what="the VM's disks"))
    except (GcpdlError, LookupError, KeyError, ValueError):
        return None
    if not machine:
        return None
    return Expectation(machine, dest, disk, estimate(machine, disk))
