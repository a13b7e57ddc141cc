"""The flows behind `up`, `start`, `stop`, `down` and `status`.

Each takes a ``Compute`` (one project) and callbacks for progress, returns dataclasses, raises
GcpdlError subclasses; nothing here prints. Every wait is bounded by a Deadline.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from gcpdl.compute import firewall as fw
from gcpdl.compute import lookup
from gcpdl.compute import network as nw
from gcpdl.compute import quota as qt
from gcpdl.compute import requests as rq
from gcpdl.compute import zones as zn
from gcpdl.compute.adapter import Compute, prefetch
from gcpdl.compute.model import ApiCall, Instance, UpResult, ZoneAttempt
from gcpdl.deadline import Deadline
from gcpdl.errors import Aborted, ConfigError, GcpdlError, InvalidInput, NotFound, QuotaExceeded, Stockout
from gcpdl.pricing import hourly_price, region_of
from gcpdl.spec import VmSpec

CREATE_TIMEOUT = 600.0  # instance insert + RUNNING
START_TIMEOUT = 600.0
STOP_TIMEOUT = 300.0
DELETE_TIMEOUT = 600.0
PREFLIGHT_TIMEOUT = 60.0

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class Plan:
    """The dry-run: the exact requests a create would send in ``zone``, and the price."""

    project: str
    zone: str
    spec: VmSpec
    requests: list[ApiCall]
    price_per_hour: float
    ssh_from: str
    # OS Login as the dry-run found it: {"checked", "enabled", "user", "detail"}
    oslogin: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "zone": self.zone,
            "name": self.spec.name,
            "machine_type": self.spec.machine_type,
            "gpu": self.spec.gpu,
            "gpu_count": self.spec.gpu_count,
            "spot": self.spec.spot,
            "image": f"{self.spec.image_project}/{self.spec.image_family}",
            "boot_disk": f"{self.spec.disk_gb} GB {self.spec.disk_type}",
            "data_disk": f"{self.spec.data_disk_name} {self.spec.data_disk_gb} GB" if self.spec.data_disk_gb else None,
            "autostop_minutes": self.spec.autostop_minutes,
            "max_hours": self.spec.max_hours,
            "price_per_hour": self.price_per_hour,
            "ssh_from": self.ssh_from,
            "network": self.spec.network,
            "subnet": self.spec.subnet,
            "oslogin": self.oslogin,
            "requests": [c.to_json() for c in self.requests],
        }


def price_for(spec: VmSpec, zone: str) -> float:
    """$/h while running: machine + GPUs + local SSDs, the part `stop` saves (persistent disks are
    priced per month)."""
    return hourly_price(spec.machine_type, spec.gpu, spec.gpu_count, region_of(zone), spec.spot, spec.disks()).running


def startup_for(spec: VmSpec, user: str | None = None) -> str:
    """The startup script; ``user`` runs Jupyter (the OS Login POSIX user where OS Login is on)."""
    from gcpdl.startup import StartupOptions, render_startup_script

    return render_startup_script(
        StartupOptions(data_disk=bool(spec.data_disk_gb), gpu=bool(spec.gpu), autostop_minutes=spec.autostop_minutes,
                       local_ssd=spec.local_ssd,
                       **({"user": user} if user else {}))
    )


def login_extras(spec: VmSpec, login: Any = None) -> tuple[str, str]:
    """(ssh-keys, startup-script) metadata for a new VM. With OS Login (``login``, a
    gcpdl.oslogin.Login) no ssh-keys entry: the key is in the caller's OS Login profile."""
    if login is not None and login.oslogin:
        return "", startup_for(spec, login.user)
    return ssh_keys_entry(), startup_for(spec)


def ssh_keys_entry() -> str:
    from gcpdl.ssh.keys import ensure_keypair

    return ensure_keypair().metadata_entry()


def plan(project: str, zone: str, spec: VmSpec, ssh_from: str, now: Callable[[], float] = time.time,
         login: Any = None) -> Plan:
    ssh_keys, startup = login_extras(spec, login)
    calls = rq.plan_create(project, zone, spec, ssh_from, ssh_keys=ssh_keys, startup_script=startup, now=now,
                           subnet=spec.subnet)
    return Plan(project, zone, spec, calls, price_for(spec, zone), ssh_from)


def first_zone(zone: str | None, zones: list[str]) -> str:
    z = zone or (zones[0] if zones else None)
    if not z:
        raise ConfigError(
            "No zone set.",
            fix="Pass --zone (e.g. us-central1-a), set GCPDL_ZONE, or run: gcpdl config set zone us-central1-a",
        )
    return z


# --- finding VMs: the one lookup (gcpdl.compute.lookup), cache first, project-wide ---------
find, require = lookup.find, lookup.require


def get_instance(compute: Compute, zone: str, name: str, deadline: Deadline) -> Instance:
    data = compute.get(f"{rq.instances_path(compute.project, zone)}/{name}", deadline, what=f"VM {name}")
    return Instance.from_api(data)


def list_managed(compute: Compute, deadline: Deadline) -> list[Instance]:
    found = compute.aggregated("instances", deadline, filter="labels.gcpdl = managed")
    out = [Instance.from_api(i) for items in found.values() for i in items if (i.get("labels") or {}).get("gcpdl") == "managed"]
    return sorted(out, key=lambda i: (i.name, i.zone))


# --- up -----------------------------------------------------------------------------------
@dataclass
class UpContext:
    compute: Compute
    zones: list[str]  # candidates in order; the first is where we start
    ssh_from: str  # CIDR the firewall allows
    progress: Progress = _quiet
    confirm: Callable[[float], bool] | None = None  # asked before the first mutation of a create
    confirm_above: float = float("inf")
    now: Callable[[], float] = time.time
    attempts: list[ZoneAttempt] = field(default_factory=list)
    # The end of `up` (issue 3): e.g. gcpdl.ssh.ready.wait_ready -- startup progress, SSH with a
    # verified host key, Jupyter, ~/.ssh config. Its return value becomes UpResult.ssh.
    ready: Callable[[Instance, Deadline], Any] | None = None
    network_given: bool = False  # the user named the network (--network, setting): a missing one is their typo
    inserting: str | None = None  # zone where the instance insert was sent (Ctrl-C may leave a VM)


class UpInterrupted(KeyboardInterrupt):
    """Ctrl-C during `up` after the VM was asked for: what exists, so the CLI can say it."""

    def __init__(self, name: str, zone: str, price_per_hour: float, ssh_rule: bool, rule_name: str, running: bool = False):
        super().__init__(name)
        self.name, self.zone, self.price_per_hour = name, zone, price_per_hour
        self.ssh_rule, self.rule_name, self.running = ssh_rule, rule_name, running


def up(ctx: UpContext, spec: VmSpec) -> UpResult:
    compute = ctx.compute
    prefetch()  # google.cloud.compute_v1 imports on a thread while the reads below run
    deadline = compute.new_deadline(PREFLIGHT_TIMEOUT, f"the checks before creating {spec.name}")
    compute.authorize(deadline)  # credentials and one token, before the threads below
    project = compute.project
    first = ctx.zones[0]

    with ThreadPoolExecutor(max_workers=6, thread_name_prefix="gcpdl-read") as pool:
        # OS Login is decided by the project's metadata (a new VM sets no enable-oslogin)
        oslogin = compute.factory.oslogin()
        reads = create_reads(pool, compute, oslogin, spec, first, deadline)
        f_existing = pool.submit(find, compute, spec.name, deadline)
        f_rule = pool.submit(compute.get_or_none, fw.rule_path(project, spec.name), deadline)
        f_deny = pool.submit(compute.get_or_none, fw.deny_path(project, spec.name), deadline)
        f_disk = pool.submit(compute.aggregated, "disks", deadline, f"name = {spec.data_disk_name}") if spec.data_disk_gb else None
        # a --machine that is not a catalogue default may not exist in this zone
        f_machine = pool.submit(
            compute.get_or_none, f"{rq.zone_path(project, first)}/machineTypes/{spec.machine_type}", deadline,
        ) if not _default_machine(spec) else None
        existing = f_existing.result()
        if existing is not None:
            return _reuse(ctx, spec, existing, f_rule.result(), f_deny.result())
        if f_rule.result() is not None or f_deny.result() is not None:
            # rules named after NAME but no VM: a cluster NAME (its rules carry its name), or leftovers
            from gcpdl.compute import cluster

            found = cluster.find(compute, spec.name, deadline)
            if found is not None:
                raise cluster.IsCluster(spec.name, found.size)
        offered = reads.offered.result() if reads.offered else None
        image = reads.image.result()
        rule, deny = f_rule.result(), f_deny.result()
        net_doc = reads.net.result()
        disk_zones = [z for z, items in (f_disk.result() if f_disk else {}).items() if items]
        machine_missing = f_machine is not None and f_machine.result() is None
        project_doc = reads.project.result()

    if reads.zone is not None and reads.zone.result() is None:
        raise InvalidInput(f"Zone {first} does not exist. See the zones with: gcloud compute zones list")
    zn.check_zone(spec, first, offered or {})
    if machine_missing:
        raise InvalidInput(f"Machine type {spec.machine_type} does not exist in zone {first}.")
    image_gb = int(image.get("diskSizeGb") or 0)
    if spec.disk_gb < image_gb:
        raise InvalidInput(f"--disk {spec.disk_gb} GB is smaller than the image {spec.image_family} ({image_gb} GB); use --disk {image_gb} or more.")
    if disk_zones:
        # a data disk from an earlier `up` pins the VM to its zone: disks are zonal
        pinned = disk_zones[0]
        if spec.gpu:
            zn.check_zone(spec, pinned, offered or {})
        if pinned != first:
            ctx.progress(f"Using the existing data disk {spec.data_disk_name} in {pinned}.")
        queue: list[str] = []
        first = pinned
    else:
        queue = zn.next_zones(first, ctx.zones, offered, spec)
    # the network (and in a custom-mode VPC the subnet) for the zone the VM starts in; failover
    # stays in regions the choice covers
    choice = nw.choose(project, spec.network, spec.subnet, net_doc, first, ctx.network_given)
    queue = [z for z in queue if choice.usable(z)]
    if reads.quota is not None:
        known = {region_of(ctx.zones[0]): reads.quota.result()}
        project_quotas = None if project_doc is None else project_doc.get("quotas") or []
        placed = qt.place(compute, spec, first, queue, project_quotas, known, deadline)
        if placed.skipped:
            ctx.attempts.append(ZoneAttempt(placed.skipped[0], "quota", placed.skipped[1]))
            ctx.progress(f"  {placed.skipped[0]}: {placed.skipped[1]} Skipping region {region_of(placed.skipped[0])}.")
        first, queue = placed.first, placed.queue

    if not spec.gpu_given:
        ctx.progress(f"No --gpu given: creating {spec.name} with {spec.gpu_count} {spec.gpu} ({spec.machine_type}).")
    price = price_for(spec, first)
    if ctx.confirm is not None and price > ctx.confirm_above and not ctx.confirm(price):
        declined = Aborted("Nothing created.")
        declined.exit_code = 0  # "n" to the price is an answer, not a failure (issue 10)
        raise declined
    # With OS Login on, gcpdl's key goes into the caller's profile (never ssh-keys) and the
    # startup script runs Jupyter as their POSIX user. Only now: a refused `up` imports nothing.
    if oslogin.setting({}).enabled:
        oslogin.require_roles_for_new_vm()
    extras = login_extras(spec, oslogin.login({}))

    # The allow rule is not needed until SSH; create it beside the VM, off the critical path.
    # The deny rule must exist before the VM does: a project's default-allow-ssh would otherwise
    # open the VM to the whole internet from its first second.
    rule_call = fw.plan_rule(project, spec.name, ctx.ssh_from, rule, spec.network)
    deny_call = fw.plan_deny(project, spec.name, deny, spec.network)
    calls_needed = ["instances.insert", "instances.delete"] + (["disks.insert", "disks.delete"] if spec.data_disk_gb else [])
    if rule_call or deny_call:
        calls_needed += ["firewalls.insert", "firewalls.patch", "firewalls.delete"]
    compute.clients_for(calls_needed)
    create_deadline = compute.new_deadline(CREATE_TIMEOUT, f"{spec.name} to be created")
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="gcpdl-fw") as pool:
        f_fw = pool.submit(fw.apply, compute, spec.name, rule_call, create_deadline) if rule_call else None
        f_deny = pool.submit(fw.apply, compute, spec.name, deny_call, create_deadline) if deny_call else None
        try:
            # a data disk is made while the deny rule's operation runs; the instance waits for it
            before_insert = f_deny.result if f_deny is not None else None
            created = _create_in_zones(ctx, spec, first, queue, create_deadline, tuple(disk_zones), extras, choice,
                                       before_insert)
        except KeyboardInterrupt:
            if ctx.inserting is None:  # no create request went out: nothing bills, undo the rules
                if _settle(f_fw):
                    _cleanup(ctx, rq.firewall_delete(project, spec.name), f"firewall rule {rq.firewall_name(spec.name)}")
                if _settle(f_deny):
                    _cleanup(ctx, rq.deny_delete(project, spec.name), f"firewall rule {rq.deny_rule_name(spec.name)}")
                raise
            # The VM was asked for and will run (and bill) without us: never leave it without its
            # SSH rule silently. Let the rule's own request finish, then say what exists.
            rule_ok = f_fw is None or f_fw.exception() is None
            raise UpInterrupted(spec.name, ctx.inserting, price_for(spec, ctx.inserting), rule_ok, rq.firewall_name(spec.name)) from None
        except BaseException:
            # only rules this run created are removed
            if _settle(f_fw):
                _cleanup(ctx, rq.firewall_delete(project, spec.name), f"firewall rule {rq.firewall_name(spec.name)}")
            if _settle(f_deny):
                _cleanup(ctx, rq.deny_delete(project, spec.name), f"firewall rule {rq.deny_rule_name(spec.name)}")
            raise
        if f_fw is not None:
            f_fw.result()  # a failed rule is an error: the VM exists but SSH would be closed
    inst = get_instance(compute, created, spec.name, create_deadline)
    result = UpResult(
        instance=inst,
        action="created",
        price_per_hour=price_for(spec, created),
        attempts=ctx.attempts,
        firewall_rule=rq.firewall_name(spec.name),
        ssh_from=ctx.ssh_from,
    )
    return _finish(ctx, result)


@dataclass
class CreateReads:
    """The pre-flight reads every create shares (one VM's or a cluster's), in flight at once."""

    project: Future  # Compute's project resource: OS Login (commonInstanceMetadata) and GPU quota
    net: Future  # the network (its subnets come with it)
    offered: Future | None  # a GPU's zones (acceleratorTypes)
    zone: Future | None  # without a GPU: does the first zone exist
    image: Future  # the image family's newest image (its size)
    quota: Future | None  # the first zone's region's GPU quota


def create_reads(pool: ThreadPoolExecutor, compute: Compute, oslogin: Any, spec: VmSpec, first: str,
                 deadline: Deadline) -> CreateReads:
    project = compute.project
    return CreateReads(
        project=pool.submit(_project_doc, oslogin),  # one projects.get: OS Login and GPU quota
        net=pool.submit(compute.get_or_none, nw.network_path(project, spec.network), deadline),
        offered=pool.submit(zn.accelerator_zones, compute, spec.accelerator, deadline) if spec.gpu else None,
        zone=None if spec.gpu else pool.submit(compute.get_or_none, rq.zone_path(project, first), deadline),
        image=pool.submit(
            compute.get, f"/compute/v1/projects/{spec.image_project}/global/images/family/{spec.image_family}",
            deadline, None, f"Image family {spec.image_family} in project {spec.image_project}",
        ),
        # GPU quota (project-wide from the project read, and the first zone's region): checked
        # before anything is created
        quota=pool.submit(qt.read_region, compute, region_of(first), deadline) if spec.gpu else None,
    )


def _project_doc(oslogin: Any) -> dict[str, Any] | None:
    """Compute's project resource, read once for OS Login (commonInstanceMetadata) and the GPU
    quota (quotas). None when the caller may not read it: quota is then left to the insert's own
    error, and OS Login to the project's default (off) with the instance's own metadata deciding."""
    from gcpdl.errors import PermissionDenied

    try:
        return oslogin.project_info()
    except PermissionDenied:
        oslogin.remember_project({})
        return None


READY_TIMEOUT = 900.0  # first boot installs the NVIDIA driver: minutes, not seconds


def _finish(ctx: UpContext, result: UpResult) -> UpResult:
    """--- SSH step (issue 3) --- the VM exists and runs; make it usable, under its own deadline."""
    lookup.remember(ctx.compute, result.instance)
    if ctx.ready is not None:
        try:
            result.ssh = ctx.ready(result.instance, ctx.compute.new_deadline(READY_TIMEOUT, f"{result.instance.name} to be ready"))
        except KeyboardInterrupt:
            inst = result.instance
            raise UpInterrupted(inst.name, inst.zone, result.price_per_hour, True, result.firewall_rule or "", running=True) from None
    result.api_calls = ctx.compute.calls
    return result


def _default_machine(spec: VmSpec) -> bool:
    from gcpdl.spec import DEFAULT_CPU_MACHINE

    gpu = spec.catalogue
    return spec.machine_type == (gpu.machines[spec.gpu_count] if gpu else DEFAULT_CPU_MACHINE)


def _settle(f: Future | None) -> Any:
    """The future's result once it is done, or None if it failed (its error is not ours to raise)."""
    if f is None:
        return None
    try:
        return f.result()
    except BaseException:
        return None


def _cleanup(ctx: UpContext, call: ApiCall, what: str) -> None:
    """Best-effort removal of something this run created; say so if it could not be removed."""
    try:
        ctx.compute.run(call, ctx.compute.new_deadline(DELETE_TIMEOUT, f"{what} to be removed"))
        ctx.progress(f"Removed {what} created by this run.")
    except GcpdlError as e:
        ctx.progress(f"Could not remove {what}: {e.message} Remove it in the console.")


def _create_in_zones(ctx: UpContext, spec: VmSpec, first: str, queue: list[str], deadline: Deadline,
                     known_disk_zones: tuple[str, ...], extras: tuple[str, str], choice: nw.NetworkChoice | None = None,
                     before_insert: Callable[[], Any] | None = None) -> str:
    """Try ``first``, then ``queue`` on stockout / regional quota. Returns the zone used.
    ``extras`` is (ssh-keys, startup-script), the metadata the dry-run shows too;
    ``before_insert`` runs (and may raise) before every instance insert: the deny rule's wait."""
    compute, project = ctx.compute, ctx.compute.project
    tried: set[str] = set()
    skip_regions: set[str] = set()
    zone: str | None = first
    ssh_keys, startup = extras
    while zone is not None:
        tried.add(zone)
        created_disk = False
        ctx.progress(f"Creating {spec.name} in {zone}...")
        try:
            if spec.data_disk_gb:
                # the pre-flight aggregatedList already said whether it exists; a new zone is asked
                known = zone in known_disk_zones
                existing = True if known else (None if zone == first else
                    compute.get_or_none(f"{rq.zone_path(project, zone)}/disks/{spec.data_disk_name}", deadline))
                if existing is None:
                    compute.run(rq.data_disk_insert(project, zone, spec), deadline)
                    created_disk = True
            body = rq.instance_body(project, zone, spec, ssh_keys=ssh_keys, startup_script=startup, now=ctx.now(),
                                    subnet=choice.subnet_for(zone) if choice else spec.subnet)
            if before_insert is not None:
                before_insert()
            ctx.inserting = zone  # from here a Ctrl-C may leave a VM behind (UpInterrupted says so)
            compute.run(rq.instance_insert(project, zone, body), deadline)
            ctx.attempts.append(ZoneAttempt(zone, "created"))
            return zone
        except (Stockout, QuotaExceeded) as e:
            ctx.inserting = None  # refused: no VM
            if created_disk:
                _cleanup(ctx, rq.disk_delete(project, zone, spec.data_disk_name), f"data disk {spec.data_disk_name}")
            api = getattr(e, "api_error", None)
            if isinstance(e, QuotaExceeded):
                if getattr(e, "global_quota", True):
                    ctx.attempts.append(ZoneAttempt(zone, "quota", e.message))
                    raise
                skip_regions.add(region_of(zone))
                ctx.attempts.append(ZoneAttempt(zone, "quota", e.message))
                ctx.progress(f"  {zone}: {e.message} Skipping region {region_of(zone)}.")
            else:
                ctx.attempts.append(ZoneAttempt(zone, "stockout", "no capacity for this VM right now"))
                ctx.progress(f"  {zone}: out of capacity for {spec.machine_type}{' + ' + spec.gpu_label if spec.attached_gpu else ''}.")
            available = api.zones_available if api is not None else []
            queue = [z for z in zn.reorder(queue, available, tried, skip_regions) if choice is None or choice.usable(z)]
            if len(tried) >= zn.MAX_ZONE_ATTEMPTS:
                queue = []
            zone = queue.pop(0) if queue else None
        except BaseException as e:
            # after a Ctrl-C once the insert went out, the VM may be attaching the disk: keep it
            if created_disk and not (isinstance(e, KeyboardInterrupt) and ctx.inserting):
                _cleanup(ctx, rq.disk_delete(project, zone, spec.data_disk_name), f"data disk {spec.data_disk_name}")
            raise
    summary = "; ".join(f"{a.zone}: {a.outcome}" for a in ctx.attempts)
    raise Stockout(
        f"No capacity for {spec.name} ({spec.machine_type}{', ' + spec.gpu_label if spec.gpu else ''}) in the zones tried ({summary}).",
        fix="Try again later, another GPU, --spot, or more zones (gcpdl config set zones ZONE,ZONE).",
    )


def differences(spec: VmSpec, inst: Instance) -> list[str]:
    out = []
    if spec.gpu_given and inst.machine_type != spec.machine_type:
        out.append(f"machine type is {inst.machine_type}, not {spec.machine_type}")
    if spec.gpu_given and (inst.gpu, inst.gpu_count if inst.gpu else 0) != (spec.gpu, spec.gpu_count if spec.gpu else 0):
        out.append(f"GPU is {inst.gpu_label}, not {spec.gpu_label}")
    if spec.spot and not inst.spot:  # a plain `up` on a Spot VM is not asking for a change
        out.append("it is not a Spot VM")
    if spec.disk_given and inst.boot_disk_gb and inst.boot_disk_gb != spec.disk_gb:
        out.append(f"boot disk is {inst.boot_disk_gb} GB, not {spec.disk_gb} GB")
    if spec.data_disk_gb and spec.data_disk_name not in inst.disks:
        out.append(f"it has no data disk {spec.data_disk_name}")
    return out


def _reuse(ctx: UpContext, spec: VmSpec, inst: Instance, rule: dict | None, deny: dict | None = None) -> UpResult:
    """`up` on a VM that exists: never a duplicate. Start it if stopped; refresh the SSH rule
    and put the deny rule back if it is missing or changed (before starting a stopped VM)."""
    compute = ctx.compute
    if not inst.managed:
        raise InvalidInput(f"A VM named {spec.name} already exists in {inst.zone} and was not created by gcpdl; choose another name.")
    diffs = differences(spec, inst)
    owner = inst.labels.get(rq.CLUSTER_LABEL) or spec.name  # a cluster's node: the cluster's rules
    if owner != spec.name:
        rule = compute.get_or_none(fw.rule_path(compute.project, owner), compute.new_deadline(PREFLIGHT_TIMEOUT, "the SSH rules"))
        deny = compute.get_or_none(fw.deny_path(compute.project, owner), compute.new_deadline(PREFLIGHT_TIMEOUT, "the SSH rules"))
    rule_call = fw.plan_rule(compute.project, owner, ctx.ssh_from, rule, inst.network)
    deny_call = fw.plan_deny(compute.project, owner, deny, inst.network)
    deadline = compute.new_deadline(START_TIMEOUT, f"{spec.name} to start")
    action = "reused"
    if rule_call is not None or deny_call is not None:
        compute.clients_for(["firewalls.insert", "firewalls.patch"])
    if deny_call is not None:
        fw.apply(compute, owner, deny_call, deadline)
        ctx.progress(f"Restored the firewall rule {deny_call.resource} that keeps SSH to {spec.name} closed to everyone else.")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gcpdl-fw") as pool:
        f_fw = pool.submit(fw.apply, compute, owner, rule_call, deadline) if rule_call else None
        if inst.status in ("RUNNING",):
            ctx.progress(f"{spec.name} is already running in {inst.zone}.")
        else:
            ctx.progress(f"Starting {spec.name} in {inst.zone}...")
            try:
                inst = _start(compute, inst, deadline, ctx.now)
            except KeyboardInterrupt:  # the start was asked for: say it runs (and bills)
                rule_ok = f_fw is None or f_fw.exception() is None
                raise UpInterrupted(spec.name, inst.zone, _price_of(inst), rule_ok, rq.firewall_name(spec.name), running=True) from None
            action = "started"
        if f_fw is not None:
            f_fw.result()
    if action == "reused":
        inst = get_instance(compute, inst.zone, inst.name, deadline) if inst.status != "RUNNING" else inst
    result = UpResult(
        instance=inst, action=action, price_per_hour=_price_of(inst), differences=diffs,
        firewall_rule=rq.firewall_name(owner), ssh_from=ctx.ssh_from,
    )
    return _finish(ctx, result)


def _price_of(inst: Instance) -> float:
    """The same figure as ``price_for`` and `cost`'s running price, for a VM that exists."""
    return hourly_price(inst.machine_type, inst.gpu, inst.gpu_count, region_of(inst.zone), inst.spot).running


# --- start / stop / down ------------------------------------------------------------------
def _wait_settled(compute: Compute, inst: Instance, deadline: Deadline) -> Instance:
    """Wait out a transition (STOPPING, PROVISIONING, ...) before acting on the VM."""
    while inst.status in ("STOPPING", "SUSPENDING", "PROVISIONING", "STAGING", "REPAIRING", "PENDING_STOP"):
        deadline.pause(compute.poll_interval)
        inst = get_instance(compute, inst.zone, inst.name, deadline)
    return inst


def _runlog_call(compute: Compute, inst: Instance, event: str, now: float) -> ApiCall:
    items = dict(inst.metadata)
    items[rq.RUNLOG_KEY] = rq.runlog_append(items.get(rq.RUNLOG_KEY), event, now)
    return rq.set_metadata(compute.project, inst.zone, inst.name, items, inst.metadata_fingerprint)


def _append_runlog(compute: Compute, inst: Instance, event: str, now: float, deadline: Deadline) -> dict | None:
    """Send the run-log line (not waited for). Metadata is written whole, guarded by its
    fingerprint: if someone else (the autostop agent, `gcpdl autostop`) changed it since we read
    it, read it again and retry once. The run log feeds cost estimates; it never blocks
    start/stop, so a second failure only loses this line."""
    for attempt in range(2):
        try:
            return compute.execute(_runlog_call(compute, inst, event, now), deadline)
        except GcpdlError:
            if attempt == 1:
                return None
            inst = get_instance(compute, inst.zone, inst.name, deadline)
    return None


def _start(compute: Compute, inst: Instance, deadline: Deadline, now: Callable[[], float]) -> Instance:
    inst = _wait_settled(compute, inst, deadline)
    if inst.status == "RUNNING":
        return inst
    compute.clients_for(["instances.setMetadata", "instances.start"])
    # The run log line goes in first (a stopped VM takes metadata), but we do not wait for it
    # before asking to start: both operations run side by side.
    meta_op = _append_runlog(compute, inst, "start", now(), deadline)
    start_op = compute.execute(rq.instance_start(compute.project, inst.zone, inst.name), deadline)
    compute.wait(start_op, deadline, f"Starting {inst.name}")
    _wait_quietly(compute, meta_op, deadline)
    return get_instance(compute, inst.zone, inst.name, deadline)


def _wait_quietly(compute: Compute, op: dict | None, deadline: Deadline) -> None:
    if op is None:
        return
    try:
        compute.wait(op, deadline, "run log update")
    except GcpdlError:
        pass  # the run log is for cost estimates; a lost line must not fail start/stop


def start(compute: Compute, name: str, now: Callable[[], float] = time.time, progress: Progress = _quiet,
          ssh_from: str | None = None) -> Instance:
    """Start the VM. Its SSH rules first: the allow rule follows ``ssh_from`` (the caller's
    address moves between networks; None leaves it alone) and a missing deny rule comes back
    before the VM runs."""
    deadline = compute.new_deadline(START_TIMEOUT, f"{name} to start")
    inst = require(compute, name, deadline)
    if inst.managed:
        # a cluster's node carries the cluster's tag: its rules are the cluster's
        fw.ensure_rules(compute, inst.labels.get(rq.CLUSTER_LABEL) or name, ssh_from, deadline, inst.network, progress)
    if inst.status != "RUNNING":
        progress(f"Starting {name} in {inst.zone}...")
    inst = _start(compute, inst, deadline, now)
    lookup.remember(compute, inst)
    return inst


def stop(compute: Compute, name: str, now: Callable[[], float] = time.time, progress: Progress = _quiet) -> Instance:
    deadline = compute.new_deadline(STOP_TIMEOUT, f"{name} to stop")
    inst = require(compute, name, deadline)
    inst = _wait_settled(compute, inst, deadline)
    if inst.status in ("TERMINATED", "STOPPED", "SUSPENDED"):
        return inst
    progress(f"Stopping {name} in {inst.zone}...")
    compute.clients_for(["instances.setMetadata", "instances.stop"])
    meta_op = _append_runlog(compute, inst, "stop", now(), deadline)
    stop_op = compute.execute(rq.instance_stop(compute.project, inst.zone, inst.name), deadline)
    compute.wait(stop_op, deadline, f"Stopping {name}")
    _wait_quietly(compute, meta_op, deadline)
    return get_instance(compute, inst.zone, inst.name, deadline)


@dataclass
class DownResult:
    name: str
    zone: str
    deleted: list[str]
    kept: list[str]
    kept_disks: list[tuple[int, str, str]] = field(default_factory=list)  # (size GB, type, zone): still billed

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "zone": self.zone, "deleted": self.deleted, "kept": self.kept}


def _kept_disk(compute: Compute, zone: str, disk: str, deadline: Deadline) -> list[tuple[int, str, str]]:
    """Size and type of a data disk `down` keeps, so the CLI can say what it costs a month."""
    try:
        d = compute.get_or_none(f"/compute/v1/projects/{compute.project}/zones/{zone}/disks/{disk}", deadline)
    except GcpdlError:
        return []
    if not d:
        return []
    return [(int(d.get("sizeGb") or 0), (d.get("type") or "pd-balanced").rsplit("/", 1)[-1], zone)]


def down(
    compute: Compute,
    name: str,
    delete_data: bool = False,
    confirm: Callable[[str], bool] | None = None,
    now: Callable[[], float] = time.time,
    progress: Progress = _quiet,
) -> DownResult:
    """Delete the VM and its boot disk and its firewall rule; keep NAME-data unless asked.
    ``confirm`` gets what is about to go ("box in us-central1-a") and may say no."""
    deadline = compute.new_deadline(DELETE_TIMEOUT, f"{name} to be deleted")
    inst = find(compute, name, deadline)
    if inst is None:
        from gcpdl.compute import cluster

        # a cluster's rules carry its name too: never take them for a lone VM's leftovers
        if cluster.find(compute, name, deadline) is not None:
            return cluster.down(compute, name, confirm=confirm, progress=progress, now=now, delete_data=delete_data)
        return _down_leftovers(compute, name, delete_data, confirm, deadline, progress)
    if not inst.managed:
        raise InvalidInput(f"VM {name} was not created by gcpdl; delete it in the console if you mean to.")
    if confirm is not None and not confirm(f"{name} in {inst.zone}"):
        raise Aborted("Nothing deleted.")
    project, zone = compute.project, inst.zone
    data_disk = f"{name}-data"
    has_data = data_disk in inst.disks
    compute.clients_for(["instances.setMetadata", "instances.delete", "firewalls.delete", "disks.delete"])
    deleted, kept = [f"instance {name}"], []
    if inst.status == "RUNNING":
        # last run-log line, for cost estimates until the VM is gone; not waited for
        _append_runlog(compute, inst, "stop", now(), deadline)
    progress(f"Deleting {name} in {zone}...")
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gcpdl-fw") as pool:
        f_fw = pool.submit(_delete_rule, compute, rq.firewall_name(name), deadline)
        compute.run(rq.instance_delete(project, zone, name), deadline)
        lookup.forget(compute, name)
        if inst.disks:
            deleted.append(f"boot disk {inst.disks[0]}")
        if f_fw.result():
            deleted.append(f"firewall rule {rq.firewall_name(name)}")
    # the deny rule goes last, once the VM is gone: until then it keeps the world out
    if _delete_rule(compute, rq.deny_rule_name(name), deadline):
        deleted.append(f"firewall rule {rq.deny_rule_name(name)}")
    if has_data:
        if delete_data:
            compute.run(rq.disk_delete(project, zone, data_disk), deadline)
            deleted.append(f"data disk {data_disk}")
        else:
            kept.append(f"data disk {data_disk}")
            return DownResult(name, zone, deleted, kept, _kept_disk(compute, zone, data_disk, deadline))
    return DownResult(name, zone, deleted, kept)


def _down_leftovers(compute: Compute, name: str, delete_data: bool, confirm: Callable[[str], bool] | None,
                    deadline: Deadline, progress: Progress) -> DownResult:
    """The VM is gone (deleted in the console, or an `up` that died half-way): remove its SSH rule,
    and its data disk if asked, so nothing gcpdl made for it lingers."""
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="gcpdl-read") as pool:
        f_rules = [pool.submit(compute.get_or_none, path, deadline) for path in
                   (fw.rule_path(compute.project, name), fw.deny_path(compute.project, name))]
        disks = compute.aggregated("disks", deadline, filter=f"name = {name}-data")
        rules = [r["name"] for r in (f.result() for f in f_rules) if r is not None]
    disk_zone = next((z for z, items in disks.items() if items), None)
    if not rules and disk_zone is None:
        raise NotFound(f"No VM named {name} in project {compute.project}.", fix="See your VMs with: gcpdl status")
    if rules and confirm is not None and not confirm(f"what is left of {name} (its SSH firewall rules)"):
        raise Aborted("Nothing deleted.")
    progress(f"No VM named {name}; removing what is left of it.")
    deleted, kept = [], []
    for rule in rules:
        if _delete_rule(compute, rule, deadline):
            deleted.append(f"firewall rule {rule}")
    if disk_zone is not None:
        if delete_data:
            compute.run(rq.disk_delete(compute.project, disk_zone, f"{name}-data"), deadline)
            deleted.append(f"data disk {name}-data")
        else:
            kept.append(f"data disk {name}-data")
            return DownResult(name, disk_zone, deleted, kept, _kept_disk(compute, disk_zone, f"{name}-data", deadline))
    return DownResult(name, disk_zone or "", deleted, kept)


def _delete_rule(compute: Compute, rule: str, deadline: Deadline) -> bool:
    from gcpdl.errors import NotFound as _NF

    try:
        compute.run(rq.rule_delete(compute.project, rule), deadline)
        return True
    except _NF:
        return False


# --- status -------------------------------------------------------------------------------
@dataclass
class VmStatus:
    instance: Instance
    price_per_hour: float
    uptime_s: float | None
    autostop_reason: str | None = None
    disk_monthly: float | None = None  # stopped VMs: what their disks still cost a month
    open_to_world: list[fw.OpenRule] = field(default_factory=list)  # other rules that let the internet in

    @property
    def spend_since_start(self) -> float | None:
        """Running VMs: what this run has cost so far (price now x time since the last start)."""
        if self.uptime_s is None:
            return None
        return round(self.price_per_hour * self.uptime_s / 3600.0, 2)

    @property
    def autostop_minutes(self) -> int | None:
        from gcpdl.autostop import window_minutes

        return window_minutes(self.instance.metadata)

    def as_dict(self) -> dict[str, Any]:
        from gcpdl.autostop import window_label

        return {
            "kind": "vm",
            **self.instance.summary(),
            "cluster": self.instance.labels.get(rq.CLUSTER_LABEL),
            "uptime_s": None if self.uptime_s is None else int(self.uptime_s),
            "price_per_hour": self.price_per_hour,
            "spend_since_start": self.spend_since_start,
            "disk_monthly": self.disk_monthly,
            "autostop": window_label(self.autostop_minutes),
            "autostop_minutes": self.autostop_minutes,
            "autostop_reason": self.autostop_reason,
            "open_to_world": [o.as_dict() for o in self.open_to_world if not o.harmless],
        }


@dataclass
class KeptDisk:
    """A gcpdl data disk attached to no VM (kept by `down`): it bills every month."""

    name: str
    zone: str
    size_gb: int
    disk_type: str
    disk_monthly: float
    vm: str | None  # the VM it was made for (label gcpdl-vm)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "disk", **asdict(self)}


@dataclass
class StatusReport:
    vms: list[VmStatus]
    kept_disks: list[KeptDisk] = field(default_factory=list)
    extra: Any = None  # what ``after_list`` returned

    def rows(self) -> list[dict[str, Any]]:
        return [v.as_dict() for v in self.vms] + [d.as_dict() for d in self.kept_disks]


def status(compute: Compute, name: str | None = None, now: Callable[[], float] = time.time) -> list[VmStatus]:
    return status_report(compute, name, now).vms


def status_report(compute: Compute, name: str | None = None, now: Callable[[], float] = time.time,
                  after_list: Callable[[list[Instance]], Any] | None = None) -> StatusReport:
    """``after_list`` (the CLI's ssh-config reads) runs on the pool as soon as the VMs are listed,
    beside the stopped VMs' reads: status waits for one round trip after the list, not two."""
    deadline = compute.new_deadline(PREFLIGHT_TIMEOUT, "the VM list")
    preempted: dict[str, Future] = {}
    reasons: dict[str, Future] = {}
    # every extra read at once: status waits for one round trip after the list, not one per VM.
    # The disk list goes alongside the VM list (stopped VMs and kept data disks still bill), and
    # so do the project's firewall rules (which open VMs to the world).
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="gcpdl-status") as pool:
        disks = pool.submit(_disks_by_zone, compute, deadline)
        f_rules = pool.submit(_rules_or_none, compute, deadline)
        vms = list_managed(compute, deadline)
        lookup.remember(compute, *vms)
        if name is not None:  # a VM, or every node of a cluster
            vms = [v for v in vms if v.name == name or v.labels.get(rq.CLUSTER_LABEL) == name]
        stopped = [v for v in vms if v.status in STOPPED_STATES]
        f_after = pool.submit(after_list, vms) if after_list is not None else None
        for v in stopped:
            reasons[v.name] = pool.submit(_autostop_reason, compute, v, deadline)
            if v.spot:
                preempted[v.name] = pool.submit(_was_preempted, compute, v, deadline)
        kept = _kept_disks(vms, disks.result(), name)
        rules = f_rules.result()
        extra = f_after.result() if f_after is not None else None
    if name is not None and not vms and not kept:
        raise NotFound(f"No gcpdl VM named {name} in project {compute.project}.", fix="See your VMs with: gcpdl status")
    t = now()
    out = []
    for v in vms:
        v.preempted = v.preempted or (v.name in preempted and preempted[v.name].result())
        reason = reasons[v.name].result() if v.name in reasons else None
        monthly = _disk_monthly(v, disks.result()) if v.status in STOPPED_STATES else None
        out.append(VmStatus(v, _price_of(v) if v.status == "RUNNING" else 0.0, v.uptime(t), reason, monthly))
    if rules is not None and vms:
        found = fw.world_open_rules(rules, [(v.name, v.network, v.tags) for v in vms])
        for row in out:
            row.open_to_world = [o for o in found if row.instance.name in o.vms]
    return StatusReport(out, kept, extra)


def _rules_or_none(compute: Compute, deadline: Deadline) -> list[dict] | None:
    try:
        return fw.list_rules(compute, deadline)
    except GcpdlError:
        return None  # best effort: status still answers without the firewall findings


def _kept_disks(vms: list[Instance], disks: dict[str, list[dict[str, Any]]] | None, name: str | None) -> list[KeptDisk]:
    """gcpdl data disks attached to none of ``vms`` (all of them, or VM ``name``'s own)."""
    if disks is None:
        return []
    from gcpdl.cost import disk_monthly_of, loose_disks

    used = {(v.zone, d) for v in vms for d in v.disks}
    found = loose_disks((d for items in disks.values() for d in items), used, {v.name for v in vms})
    out = []
    for d in found:
        vm = (d.get("labels") or {}).get("gcpdl-vm") or (d["name"][:-5] if d["name"].endswith("-data") else None)
        if name is not None and vm != name:
            continue
        out.append(KeptDisk(d["name"], d["zone"].rsplit("/", 1)[-1], int(d.get("sizeGb") or 0),
                            (d.get("type") or "pd-balanced").rsplit("/", 1)[-1], disk_monthly_of(d), vm))
    return out


def _disks_by_zone(compute: Compute, deadline: Deadline) -> dict[str, list[dict[str, Any]]] | None:
    try:
        return compute.aggregated("disks", deadline)
    except GcpdlError:
        return None  # best effort: status still answers without disk prices


def _disk_monthly(inst: Instance, disks: dict[str, list[dict[str, Any]]] | None) -> float | None:
    """Monthly price of the VM's own disks (boot, attached, and its NAME-data disk)."""
    if disks is None:
        return None
    from gcpdl.cost import disk_monthly_of

    names = set(inst.disks) | {f"{inst.name}-data"}
    return round(sum(disk_monthly_of(d) for d in disks.get(inst.zone, []) if d.get("name") in names), 2)


AUTOSTOP_ATTRIBUTE = "gcpdl/autostop"
STOPPED_STATES = ("TERMINATED", "STOPPED", "SUSPENDED")


def _iso(value: str | None) -> float | None:
    from gcpdl.compute.model import _parse_time

    return _parse_time(value)


def _was_preempted(compute: Compute, inst: Instance, deadline: Deadline) -> bool:
    """A reclaimed Spot VM looks like any TERMINATED one; the system's
    compute.instances.preempted operation on it (since it last started) tells them apart.
    Best effort: an error means "not known to be preempted"."""
    try:
        ops = compute.get(
            f"{rq.zone_path(compute.project, inst.zone)}/operations", deadline,
            params={"filter": "operationType = compute.instances.preempted"},
        )
    except GcpdlError:
        return False
    for op in ops.get("items") or []:
        if (op.get("targetLink") or "").endswith(f"/instances/{inst.name}"):
            started = _iso(op.get("insertTime"))
            if inst.last_start is None or started is None or started >= inst.last_start:
                return True
    return False


def _autostop_reason(compute: Compute, inst: Instance, deadline: Deadline) -> str | None:
    """The autostop agent writes its reason as guest attribute gcpdl/autostop before stopping
    the VM. Best effort: None when absent or unreadable."""
    try:
        data = compute.get_or_none(
            f"{rq.instances_path(compute.project, inst.zone)}/{inst.name}/getGuestAttributes",
            deadline, params={"variableKey": AUTOSTOP_ATTRIBUTE},
        ) or {}
    except GcpdlError:
        return None
    return data.get("variableValue") or None
