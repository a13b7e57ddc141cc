"""Spend so far and the burn rate now, from each VM's run history and the API's own timestamps.

Run history: gcpdl appends ``start <unix-seconds>`` / ``stop <unix-seconds>`` to the instance
metadata key ``gcpdl-runlog`` whenever it creates, starts, stops or deletes a VM. Stops that
gcpdl did not make (the autostop agent's shutdown, maxRunDuration, Spot preemption, the console)
leave no line; the API's ``lastStartTimestamp``/``lastStopTimestamp`` and ``status`` fill those
in. Disks bill from their creation until they are deleted, running or not, so stopped VMs and
data disks kept after ``down`` count too.

Pure arithmetic over REST JSON (``cost_report``); ``gather`` does the two reads.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from gcpdl import pricing
from gcpdl.compute.model import _last
from gcpdl.compute.model import _parse_time as _time

if TYPE_CHECKING:  # pragma: no cover
    from gcpdl.compute.adapter import Compute
    from gcpdl.deadline import Deadline

RUNLOG_KEY = "gcpdl-runlog"
# States in which the machine and its GPUs bill (or are about to: a start is under way).
BILLING_STATES = ("PROVISIONING", "STAGING", "RUNNING", "STOPPING", "SUSPENDING", "REPAIRING")
DEFAULT_DISK_TYPE = "pd-balanced"  # gcpdl's default, when the disk itself could not be read


@dataclass(frozen=True)
class Interval:
    start: float
    end: float

    @property
    def hours(self) -> float:
        return max(0.0, self.end - self.start) / 3600.0


@dataclass
class DiskCost:
    name: str
    zone: str
    size_gb: int
    disk_type: str
    created: float | None
    monthly: float  # $/month
    spend: float  # $ since created
    vm: str | None  # the gcpdl VM it belongs to (None: left behind by `down`)

    @property
    def per_hour(self) -> float:
        return self.monthly / pricing.HOURS_PER_MONTH


@dataclass
class VmCost:
    name: str
    zone: str
    status: str
    machine_type: str
    gpu: str | None
    gpu_count: int
    spot: bool
    running_per_hour: float  # machine + GPUs, $/h while running
    running_hours: float
    intervals: list[Interval]
    disks: list[DiskCost]
    approximate: bool  # history incomplete: no run log, or a stop whose time is unknown
    estimated: bool  # a price extrapolated (region, machine or Spot figure not in the table)

    @property
    def billing_now(self) -> bool:
        return self.status in BILLING_STATES

    @property
    def compute_spend(self) -> float:
        return self.running_per_hour * self.running_hours

    @property
    def disk_spend(self) -> float:
        return sum(d.spend for d in self.disks)

    @property
    def spend(self) -> float:
        return self.compute_spend + self.disk_spend

    @property
    def burn_per_hour(self) -> float:
        return (self.running_per_hour if self.billing_now else 0.0) + sum(d.per_hour for d in self.disks)


@dataclass
class CostReport:
    vms: list[VmCost]
    loose_disks: list[DiskCost]  # gcpdl data disks whose VM is gone
    now: float
    credits: float | None = None
    prices_date: str = field(default_factory=pricing.prices_date)

    @property
    def spend(self) -> float:
        return sum(v.spend for v in self.vms) + sum(d.spend for d in self.loose_disks)

    @property
    def burn_per_hour(self) -> float:
        return sum(v.burn_per_hour for v in self.vms) + sum(d.per_hour for d in self.loose_disks)

    @property
    def days_left(self) -> float | None:
        """How long ``credits`` last at the current rate (None: no credits given or nothing bills)."""
        if self.credits is None or self.burn_per_hour <= 0:
            return None
        return self.credits / (self.burn_per_hour * 24)

    def as_dict(self) -> dict[str, Any]:
        def disk(d: DiskCost) -> dict[str, Any]:
            out = asdict(d)
            out.update(monthly=round(d.monthly, 2), spend=round(d.spend, 2), per_hour=round(d.per_hour, 4))
            return out

        return {
            "vms": [
                {
                    "name": v.name, "zone": v.zone, "state": v.status, "machine_type": v.machine_type,
                    "gpu": v.gpu, "gpu_count": v.gpu_count, "spot": v.spot,
                    "running_per_hour": round(v.running_per_hour, 4), "running_hours": round(v.running_hours, 3),
                    "compute_spend": round(v.compute_spend, 2), "disk_spend": round(v.disk_spend, 2),
                    "spend": round(v.spend, 2), "burn_per_hour": round(v.burn_per_hour, 4),
                    "approximate": v.approximate, "estimated": v.estimated,
                    "runs": [{"start": _iso(i.start), "end": _iso(i.end), "hours": round(i.hours, 3)} for i in v.intervals],
                    "disks": [disk(d) for d in v.disks],
                }
                for v in self.vms
            ],
            "loose_disks": [disk(d) for d in self.loose_disks],
            "spend": round(self.spend, 2),
            "burn_per_hour": round(self.burn_per_hour, 4),
            "credits": self.credits,
            "days_left": None if self.days_left is None else round(self.days_left, 1),
            "prices_date": self.prices_date,
        }


# --- run history ---------------------------------------------------------------------------------
def parse_runlog(text: str | None) -> list[tuple[float, str]]:
    """``start 1795000000`` lines -> [(t, "start"), ...]; lines that do not parse are skipped."""
    events = []
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in ("start", "stop"):
            try:
                events.append((float(parts[1]), parts[0]))
            except ValueError:
                continue
    return events


def run_intervals(
    runlog: str | None,
    status: str,
    now: float,
    created: float | None = None,
    last_start: float | None = None,
    last_stop: float | None = None,
) -> tuple[list[Interval], bool]:
    """The intervals the VM ran, and whether they are approximate.

    The run log and the API's timestamps are merged into one event stream and walked in time
    order: a start while running or a stop while stopped is the same event seen twice (gcpdl
    writes its line a moment before the API records the transition) and is ignored.
    """
    logged = parse_runlog(runlog)
    events = list(logged)
    for t, kind in ((created, "start"), (last_start, "start"), (last_stop, "stop")):
        if t is not None:
            events.append((t, kind))
    # at equal times a stop closes the previous run before a start opens the next one
    events.sort(key=lambda e: (e[0], e[1] == "start"))
    intervals: list[Interval] = []
    approximate = not logged
    opened: float | None = None
    for t, kind in events:
        t = min(t, now)
        if kind == "start" and opened is None:
            opened = t
        elif kind == "stop" and opened is not None:
            intervals.append(Interval(opened, t))
            opened = None
    if opened is not None:
        if status in BILLING_STATES:
            intervals.append(Interval(opened, now))
        else:
            # stopped, but no stop was recorded after the last start: when is unknown
            approximate = True
    if created is not None:
        intervals = [Interval(max(i.start, created), i.end) for i in intervals if i.end > created]
    return intervals, approximate


# --- the report ----------------------------------------------------------------------------------
def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _metadata(inst: dict[str, Any]) -> dict[str, str]:
    return {i["key"]: i.get("value", "") for i in (inst.get("metadata") or {}).get("items") or []}


def _gpu_of(inst: dict[str, Any]) -> tuple[str | None, int]:
    accels = inst.get("guestAccelerators") or []
    if accels:
        key = pricing.gpu_key_for_accelerator(accels[0].get("acceleratorType", ""))
        return key, sum(int(a.get("acceleratorCount", 0)) for a in accels)
    built = pricing.table()["builtin_gpus"].get(_last(inst.get("machineType")))
    return (built[0], int(built[1])) if built else (None, 0)


def disk_monthly_of(disk: dict[str, Any]) -> float:
    """$/month of one disk, from its REST JSON (its own size, type and zone): the one place
    `status`, `cost` and `up` price a disk."""
    dtype = _last(disk.get("type")) or DEFAULT_DISK_TYPE
    return pricing.disk_monthly(int(disk.get("sizeGb") or 0), dtype, pricing.region_of(_last(disk.get("zone"))))


def _disk_cost(disk: dict[str, Any], now: float, vm: str | None) -> DiskCost:
    zone = _last(disk.get("zone"))
    size = int(disk.get("sizeGb") or 0)
    dtype = _last(disk.get("type")) or DEFAULT_DISK_TYPE
    monthly = disk_monthly_of(disk)
    created = _time(disk.get("creationTimestamp"))
    hours = max(0.0, now - created) / 3600.0 if created is not None else 0.0
    return DiskCost(disk["name"], zone, size, dtype, created, monthly, monthly / pricing.HOURS_PER_MONTH * hours, vm)


def is_managed(resource: dict[str, Any]) -> bool:
    return (resource.get("labels") or {}).get("gcpdl") == "managed"


def cost_report(
    instances: Iterable[dict[str, Any]],
    disks: Iterable[dict[str, Any]],
    now: float,
    credits: float | None = None,
) -> CostReport:
    """``instances``: gcpdl's VMs as REST JSON; ``disks``: every disk in the project (the ones
    attached to those VMs, and gcpdl data disks, are counted)."""
    disks_by_key = {(_last(d.get("zone")), d["name"]): d for d in disks}
    used: set[tuple[str, str]] = set()
    vms = []
    for inst in instances:
        zone = _last(inst.get("zone"))
        machine = _last(inst.get("machineType"))
        sched = inst.get("scheduling") or {}
        spot = sched.get("provisioningModel") == "SPOT" or bool(sched.get("preemptible"))
        gpu, count = _gpu_of(inst)
        price = pricing.hourly_price(machine, gpu, count, pricing.region_of(zone), spot)
        intervals, approximate = run_intervals(
            _metadata(inst).get(RUNLOG_KEY), inst.get("status", "UNKNOWN"), now,
            _time(inst.get("creationTimestamp")), _time(inst.get("lastStartTimestamp")), _time(inst.get("lastStopTimestamp")),
        )
        vm_disks = []
        for attached in inst.get("disks") or []:
            key = (zone, _last(attached.get("source")) or attached.get("deviceName", ""))
            used.add(key)
            disk = disks_by_key.get(key) or {
                "name": key[1], "zone": zone, "sizeGb": attached.get("diskSizeGb", 0),
                "creationTimestamp": inst.get("creationTimestamp"),
            }
            vm_disks.append(_disk_cost(disk, now, inst["name"]))
        vms.append(VmCost(
            inst["name"], zone, inst.get("status", "UNKNOWN"), machine, gpu, count, spot, price.running,
            sum(i.hours for i in intervals), intervals, vm_disks, approximate, price.estimated,
        ))
    loose = [_disk_cost(d, now, None) for d in loose_disks(disks_by_key.values(), used, {v.name for v in vms})]
    return CostReport(sorted(vms, key=lambda v: (v.name, v.zone)), loose, now, credits)


def loose_disks(disks: Iterable[dict[str, Any]], used: set[tuple[str, str]], vm_names: set[str]) -> list[dict[str, Any]]:
    """gcpdl disks attached to none of its VMs (``used``: (zone, name) of attached disks), in
    (zone, name) order: labelled by gcpdl, or named after one of its VMs (NAME-data) but detached."""
    return sorted(
        (d for d in disks
         if (_last(d.get("zone")), d["name"]) not in used
         and (is_managed(d) or d["name"].endswith("-data") and d["name"][:-5] in vm_names)),
        key=lambda d: (_last(d.get("zone")), d["name"]),
    )


def delete_hint(disk_name: str, zone: str, vm_names: Iterable[str] = ()) -> str:
    """The command that deletes a kept disk: `gcpdl down NAME --delete-data` for NAME-data whose
    VM is gone (while VM NAME exists, that command would delete the VM too)."""
    if disk_name.endswith("-data") and len(disk_name) > 5 and disk_name[:-5] not in set(vm_names):
        return f"gcpdl down {disk_name[:-5]} --delete-data"
    return f"gcloud compute disks delete {disk_name} --zone {zone}"


def gather(compute: "Compute", deadline: "Deadline", name: str | None = None) -> tuple[list[dict], list[dict]]:
    """gcpdl's VMs (one, when ``name`` is given) and the project's disks, as REST JSON."""
    found = compute.aggregated("instances", deadline, filter="labels.gcpdl = managed")
    instances = [i for items in found.values() for i in items if is_managed(i)]
    disks = [d for items in compute.aggregated("disks", deadline).values() for d in items]
    if name is not None:  # a VM, or every node of cluster NAME (with their boot disks)
        instances = [i for i in instances if i["name"] == name or (i.get("labels") or {}).get("gcpdl-cluster") == name]
        names = {name} | {i["name"] for i in instances}
        disks = [d for d in disks if d["name"] in names | {f"{name}-data"} or (d.get("labels") or {}).get("gcpdl-vm") == name]
    return instances, disks


# --- what keeps billing after `up` ---------------------------------------------------------------
UPKEEP_TIMEOUT = 20.0


@dataclass
class Upkeep:
    """What `up`'s summary says about money and data: the autostop window, the disks' monthly
    price (they bill while the VM is stopped too), and where `gcpdl sync` puts a dataset."""

    autostop: str  # the metadata value the agent reads: minutes, or "off"
    autostop_minutes: int | None
    data_disk: str | None  # NAME-data when attached
    disk_monthly: float | None  # None: the disks could not be read
    data_dir: str  # the default root of `gcpdl sync` on the VM

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def upkeep(compute: "Compute", inst: Any, disks: tuple[tuple[int, str], ...] | None = None) -> Upkeep:
    """``inst``: the VM (compute.model.Instance). ``disks``: its (size_gb, type) pairs when known
    (a VM just created from a spec); otherwise its zone's disks are read, best effort."""
    from gcpdl.autostop import window_minutes
    from gcpdl.compute.requests import zone_path
    from gcpdl.errors import GcpdlError
    from gcpdl.sync.remote import VM_DATA_ROOT

    region = pricing.region_of(inst.zone)
    monthly: float | None
    if disks is not None:
        monthly = round(sum(pricing.disk_monthly(size, dtype, region) for size, dtype in disks), 2)
    else:
        try:
            listed = compute.get(f"{zone_path(compute.project, inst.zone)}/disks",
                                 compute.new_deadline(UPKEEP_TIMEOUT, "the VM's disks")).get("items") or []
            monthly = round(sum(disk_monthly_of(d) for d in listed if d.get("name") in set(inst.disks)), 2)
        except GcpdlError:
            monthly = None
    minutes = window_minutes(inst.metadata)
    data_disk = f"{inst.name}-data" if f"{inst.name}-data" in inst.disks else None
    return Upkeep(str(minutes) if minutes else "off", minutes, data_disk, monthly, VM_DATA_ROOT)
