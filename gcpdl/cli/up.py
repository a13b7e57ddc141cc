"""`gcpdl up NAME`: create (or restart) a GPU VM. Thin: parse, validate, call the core, render."""

from __future__ import annotations

import click

from gcpdl.cli.app import App
from gcpdl.cli.options import complete_gpus, dry_run_option, json_option, name_argument, parse_hours, project_option, yes_option, zone_option

DRY_RUN_IP = "YOUR.PUBLIC.IP/32"  # placeholder: a dry-run looks nothing up on the network


@click.command()
@name_argument
@click.option("--gpu", metavar="GPU[:COUNT]", shell_complete=complete_gpus, help="t4, p4, p100, v100, l4, a100, a100-80gb or h100, with an optional count (t4:2). Default: t4 for a new VM; an existing VM restarts as it is.")
@click.option("--cpu-only", is_flag=True, help="No GPU.")
@click.option("--machine", metavar="TYPE", help="Machine type instead of the default for the GPU (checked for compatibility).")
@click.option("--image-family", help="Image family (default: a Deep Learning VM family for the GPU).")
@click.option("--image-project", help="Project of --image-family (default: deeplearning-platform-release).")
@click.option("--disk", metavar="GB", help="Boot disk size in GB (default: 100).")
@click.option("--disk-type", help="Boot disk type: pd-balanced, pd-ssd or pd-standard (default: pd-balanced).")
@click.option("--data-disk", metavar="GB", help="Also create a persistent data disk NAME-data of this size; it outlives `down`.")
@click.option("--data-disk-type", metavar="TYPE",
              help="pd-balanced (default), pd-ssd, pd-standard or hyperdisk-balanced (G2, A3; not N1 or A2): the plan shows its write speed.")
@click.option("--data-disk-throughput", type=int, metavar="MIBPS",
              help="hyperdisk-balanced only: provisioned throughput, 140-2400 MiB/s (default 140).")
@click.option("--local-ssd", type=int, metavar="N",
              help="N local NVMe SSDs (375 GB each), striped at /scratch: fastest, but wiped when the VM stops.")
@click.option("--spot", is_flag=True, help="Spot VM: much cheaper, may be preempted (it then stops and keeps its disk).")
@click.option("--autostop", metavar="60m|2h|off", help="Stop the VM after this long idle (default: 60m).")
@click.option("--max-hours", metavar="2h|90m", help="Stop the VM after this long running, whatever happens (a number alone is hours).")
@click.option("--ssh-from", metavar="CIDR", help="Allow SSH from this range instead of your current address.")
@click.option("--network", metavar="NAME", help="VPC network for the VM and its firewall rules (default: default).")
@click.option("--subnet", metavar="NAME", help="Subnetwork in the zone's region (default: the region's own or only one).")
@click.option("--nodes", type=int, metavar="N", help="A cluster: N VMs NAME-0..NAME-{N-1} in one zone, for torchrun and Ray (see gcpdl run).")
@click.option("--shared", type=int, metavar="GB", help="With --nodes: one data disk NAME-shared, read-only on every node (fill it with: gcpdl sync ... --on NAME --shared).")
@click.option("--ray", "with_ray", is_flag=True, help="With --nodes: start a Ray cluster (head on NAME-0, the others join); submit with gcpdl ray.")
@click.option("--wait/--no-wait", default=True,
              help="Wait until the startup script, SSH and Jupyter are ready, and print how to connect (default: --wait).")
@zone_option
@project_option
@yes_option
@json_option
@dry_run_option
@click.pass_obj
def up(app: App, name: str, gpu, cpu_only, machine, image_family, image_project, disk, disk_type, data_disk,
       data_disk_type, data_disk_throughput, local_ssd, spot, autostop, max_hours, ssh_from, network, subnet, nodes, shared, with_ray, wait, zone, project, yes, as_json, dry_run) -> None:
    """Create the VM NAME (or start it again if it is stopped) and print how to reach it.

    \b
    gcpdl up box --gpu t4                  one T4 on n1-standard-8
    gcpdl up box --gpu a100:2 --spot       two A100s, Spot pricing
    gcpdl up box --gpu l4 --dry-run --json the exact API requests, nothing created
    """
    from gcpdl import spec as specs
    from gcpdl.compute import lifecycle

    max_hours = parse_hours(max_hours)
    settings = app.settings(project=project, zone=zone)
    vm = specs.build_spec(
        name, gpu=gpu, cpu_only=cpu_only, machine=machine, image_family=image_family, image_project=image_project,
        disk=disk, disk_type=disk_type, data_disk=data_disk, data_disk_type=data_disk_type,
        data_disk_throughput=data_disk_throughput, local_ssd=local_ssd, spot=spot, autostop=autostop, max_hours=max_hours,
        ssh_from=ssh_from, network=network or settings.network, subnet=subnet or settings.subnet,
    )
    if vm.machine_type in specs.SPOT_ONLY_MACHINES and not vm.spot:
        app.warn(f"{vm.machine_type} is sold only as Spot or Flex-start capacity; add --spot if creation is refused.")
    candidates = _candidates(settings.zone, settings.zones)
    first = lifecycle.first_zone(None, candidates)
    for z in candidates:
        specs.validate_zone(z)
    from gcpdl.compute import firewall

    source = vm.ssh_from or (specs.validate_cidr(settings.ssh_from) if settings.ssh_from else None)
    if source is None:
        given = firewall.my_ip_from_env()  # checked now: a bad GCPDL_MY_IP is an input error, dry-run or not
        source = f"{given}/32" if given else None
    if source is not None and firewall.width_warning(source):
        app.warn(firewall.width_warning(source))

    if nodes is not None or shared is not None or with_ray:  # a cluster: gcpdl/cli/cluster.py
        from gcpdl.cli.cluster import up_cluster

        return up_cluster(app, vm, nodes, first, candidates, source, wait=wait, yes=yes, as_json=as_json, dry_run=dry_run,
                          project=project, zone=zone, shared=shared, with_ray=with_ray)
    if dry_run:
        if not settings.project:
            from gcpdl.errors import ConfigError

            raise ConfigError(
                "No Google Cloud project set (a dry run looks nothing up).",
                fix="Pass --project, set GCPDL_PROJECT, or run: gcpdl config set project PROJECT_ID",
            )
        login, found = _oslogin_for_plan(app, project, zone)
        plan = lifecycle.plan(settings.project, first, vm, source or DRY_RUN_IP, login=login)
        plan.oslogin = found
        app.emit({**plan.as_dict(), "storage": _storage(vm, first)}, as_json, _render_plan)
        return

    from gcpdl.compute.adapter import Compute, prefetch

    prefetch()
    factory = app.factory(project=project, zone=zone)
    compute = Compute(factory, factory.project())
    factory.credentials()  # missing credentials is the likelier problem: say so before any lookup
    if source is None:
        source = firewall.ssh_source(None)
    waits = WaitLine(name)
    ctx = lifecycle.UpContext(
        compute=compute,
        zones=[first] + [z for z in candidates if z != first],
        ssh_from=source,
        progress=waits.say,
        confirm=None if yes else waits.paused(_confirm),
        confirm_above=settings.confirm_above,
        ready=_ready_step(factory, waits) if wait else None,
        network_given=vm.network != "default",  # a missing `default` gets the fix that creates it
    )
    from gcpdl.compute.cluster import IsCluster

    try:
        result = lifecycle.up(ctx, vm)
        waits.close(done=True)
    except lifecycle.UpInterrupted as e:
        waits.close()
        app.say(interrupted_message(e))
        raise click.exceptions.Exit(130)
    except IsCluster as e:  # `up NAME` on cluster NAME: the cluster, made whole again
        waits.close()
        from gcpdl.cli.cluster import up_cluster

        return up_cluster(app, vm, e.nodes, first, candidates, source, wait=wait, yes=yes, as_json=as_json, dry_run=False,
                          project=project, zone=zone)
    finally:
        waits.close()
    if app.verbose:
        app.say(f"{result.api_calls} Compute API requests.")
    for diff in result.differences:
        app.warn(f"{name} differs from what you asked for: {diff}. `gcpdl down {name}` and `up` again to change it.")
    from gcpdl.cost import upkeep

    money = upkeep(compute, result.instance, vm.disks() if result.action == "created" else None)
    app.emit({**result.as_dict(), **money.as_dict()}, as_json, _render_result)


def _storage(vm, zone: str) -> dict:
    """What each disk can write and costs, for the plan (gcpdl.disks, gcpdl.pricing)."""
    from gcpdl import disks
    from gcpdl.pricing import disk_monthly_estimated, region_of

    region = region_of(zone)
    out: dict = {"table_date": disks.table_date()}
    boot = disks.Disk(vm.disk_type, vm.disk_gb, name=vm.name)
    out["boot"] = disks.plan_entry(vm.machine_type, boot, *disk_monthly_estimated(vm.disk_gb, vm.disk_type, region))
    if vm.data_disk_gb:
        data = disks.Disk(vm.data_disk_type, vm.data_disk_gb, vm.data_disk_throughput or None, name=vm.data_disk_name)
        if vm.data_disk_type == disks.HYPERDISK and not vm.data_disk_throughput:
            data = disks.Disk(vm.data_disk_type, vm.data_disk_gb, disks.hyperdisk_range()[0], name=vm.data_disk_name)
        out["data"] = disks.plan_entry(vm.machine_type, data, *disk_monthly_estimated(
            vm.data_disk_gb, vm.data_disk_type, region, vm.data_disk_throughput))
    if vm.local_ssd:
        ssd = disks.Disk(disks.LOCAL_SSD, count=vm.local_ssd, name="local SSD")
        entry = disks.plan_entry(vm.machine_type, ssd, *disk_monthly_estimated(vm.local_ssd * 375, "local-ssd", region))
        entry["mount"] = disks.SCRATCH_MOUNT
        entry["wiped_on_stop"] = True
        out["local_ssd"] = entry
    return out


def _oslogin_for_plan(app: App, project: str | None, zone: str | None):
    """(gcpdl.oslogin.Login or None, what the plan says about OS Login). Read only (never a key
    import), and only when credentials exist: with no Google account the dry-run stays offline."""
    from gcpdl.clients import adc_available
    from gcpdl.errors import GcpdlError

    if not adc_available():
        return None, {"checked": False, "enabled": None, "user": None,
                      "detail": "not checked (no Google credentials); the plan assumes it is off"}
    from google.auth.exceptions import GoogleAuthError

    from gcpdl.ssh.target import login_user

    try:
        login = login_user(app.factory(project=project, zone=zone), {}, write=False)
    except (GcpdlError, GoogleAuthError) as e:
        reason = e.message if isinstance(e, GcpdlError) else str(e).splitlines()[0][:160]
        return None, {"checked": False, "enabled": None, "user": None, "detail": f"could not check: {reason.rstrip('.')}"}
    return login, {"checked": True, "enabled": login.oslogin, "user": login.user or None, "detail": login.detail}


def _ready_step(factory, waits: "WaitLine"):
    from gcpdl.ssh.ready import ready_hook

    return ready_hook(factory, waits.say, stage=waits.stage)


def interrupted_message(e) -> str:
    """Ctrl-C after the VM was asked for: what exists, what it costs, and the two ways on."""
    if e.running:
        what = f"VM {e.name} is running in {e.zone}"
    else:
        what = f"VM {e.name} was already requested in {e.zone}, so it exists (or will in a moment)"
    rule = (f"Its SSH rule {e.rule_name} is in place." if e.ssh_rule
            else f"Its SSH rule {e.rule_name} could not be made, so SSH is closed; `gcpdl up {e.name}` makes it.")
    return "\n".join([
        f"Interrupted. {what} and costs about ${e.price_per_hour:.2f}/h until you stop or delete it.",
        rule,
        f"  resume:  gcpdl up {e.name}",
        f"  delete:  gcpdl down {e.name}",
    ])


# what lifecycle's "...ing NAME in ZONE..." waits usually take
TYPICAL_BY_PREFIX = {"Creating ": "usually under a minute", "Starting ": "usually under a minute"}


class WaitLine:
    """`up`'s waits on stderr. On a terminal, one live line for the current stage with the time
    spent and the usual duration, redrawn every second, and where the startup log is; anywhere
    else, one plain line per stage with the time since `up` began ("[1:05] installing ...").
    ``say`` is lifecycle's progress callback (a message ending in "..." starts a wait), ``stage``
    gcpdl.ssh.ready's (a stage key)."""

    TICK = 1.0

    def __init__(self, name: str, stream=None, clock=None, live: bool | None = None):
        import sys
        import threading
        import time

        from gcpdl.cli.app import terminal_width

        self.name = name
        self.stream = stream or sys.stderr
        self.clock = clock or time.monotonic
        width = terminal_width(self.stream)
        self.live = (width is not None) if live is None else live
        self.width = width or 80
        self.began = self.clock()
        self.label: str | None = None
        self.typical: str | None = None
        self.since = self.began
        self.log_shown = False
        self.drawn = False
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- callbacks ------------------------------------------------------------------------
    def say(self, message: str) -> None:
        if message == "ready":  # the text form of the last stage
            self.stage("ready")
        elif message.endswith("...") and "\n" not in message:
            typical = next((t for p, t in TYPICAL_BY_PREFIX.items() if message.startswith(p)), None)
            self._begin(message[:-3], typical)
        else:
            with self._lock:
                self._clear()
                self._write(message + "\n")
                self._draw()

    def stage(self, key: str) -> None:
        from gcpdl.ssh.ready import STAGES, TYPICAL, stage_label, startup_log_command

        if key == "ready":
            self._end()
            return
        if key in STAGES and not self.log_shown:
            self.log_shown = True
            self.say(f"Setup log: {startup_log_command(self.name)}")
        self._begin(stage_label(key), TYPICAL.get(key))

    def paused(self, fn):
        """``fn`` (a prompt) with the live line cleared while it asks."""

        def call(*args, **kwargs):
            with self._lock:
                self._clear()
                self.label = None
            return fn(*args, **kwargs)

        return call

    def close(self, done: bool = False) -> None:
        """Stop drawing. ``done``: the last wait ended well (else it is left as it stood)."""
        self._stop.set()
        self._end(done)


    # --- drawing --------------------------------------------------------------------------
    def _begin(self, label: str, typical: str | None) -> None:
        with self._lock:
            self._end()
            self.label, self.typical, self.since = label, typical, self.clock()
            if self.live:
                self._draw()
                self._start_ticker()
            else:
                usual = f" ({typical})" if typical else ""
                self._write(f"[{_clock(self.since - self.began)}] {label}...{usual}\n")

    def _end(self, done: bool = True) -> None:
        with self._lock:
            if self.label is not None and self.live:
                self._clear()
                spent = _duration(self.clock() - self.since)
                self._write(f"{self.label}: done in {spent}\n" if done else f"{self.label}... {spent}\n")
            self.label = None

    def line(self) -> str:
        usual = f"  ({self.typical})" if self.typical else ""
        text = f"{self.label}... {_duration(self.clock() - self.since)}{usual}"
        return text[: self.width - 1]

    def _draw(self) -> None:
        if self.live and self.label is not None:
            self._write("\r\x1b[K" + self.line())
            self.drawn = True

    def _clear(self) -> None:
        if self.live and self.drawn:
            self._write("\r\x1b[K")
            self.drawn = False

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def _start_ticker(self) -> None:
        import threading

        if self._thread is not None:
            return

        def tick() -> None:
            while not self._stop.wait(self.TICK):
                with self._lock:
                    self._draw()

        self._thread = threading.Thread(target=tick, name="gcpdl-waitline", daemon=True)
        self._thread.start()


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds}s" if seconds < 60 else f"{seconds // 60}m {seconds % 60:02d}s"


def _candidates(zone: str | None, zones: list[str]) -> list[str]:
    out: list[str] = []
    for z in ([zone] if zone else []) + list(zones or []):
        if z and z not in out:
            out.append(z)
    return out


def _confirm(price: float) -> bool:
    from gcpdl.cli.options import confirm

    return confirm(f"This VM costs about ${price:.2f}/h while it runs. Create it?")


def _render_plan(plan: dict) -> str:
    from gcpdl.spec import GPUS

    gpu = plan["gpu"]
    gpu_text = f" + {plan['gpu_count']} x {GPUS[gpu].label} ({GPUS[gpu].accelerator})" if gpu else " (no GPU)"
    lines = [
        f"Plan for {plan['name']} in {plan['zone']} (project {plan['project']}), nothing created:",
        f"  machine   {plan['machine_type']}{gpu_text}{', Spot' if plan['spot'] else ''}",
        f"  image     {plan['image']}, boot disk {plan['boot_disk']}",
    ]
    storage = plan.get("storage") or {}
    if "boot" in storage:
        lines.append(f"  boot      {_disk_line(storage['boot'])}")
    if plan["data_disk"]:
        detail = f": {_disk_line(storage['data'])}" if "data" in storage else ""
        lines.append(f"  data      {plan['data_disk'].split()[0]} at /data, kept by `gcpdl down`{detail}")
    if "local_ssd" in storage:
        lines.append(f"  scratch   {_disk_line(storage['local_ssd'])}")
    if "local_ssd" in storage:
        lines.append("            wiped when the VM stops (gcpdl stop, autostop, --max-hours)"
                     f"{' or is preempted (Spot)' if plan['spot'] else ''}: a sync there starts over after a start")
    stops = [f"after {plan['autostop_minutes']} min idle" if plan["autostop_minutes"] else "autostop off"]
    if plan["max_hours"]:
        stops.append(f"after {plan['max_hours']:g} h running at most")
    lines += [
        f"  stops     {', '.join(stops)}",
        f"  network   {plan['network']}{' subnet ' + plan['subnet'] if plan['subnet'] else ''}",
        f"  ssh       tcp:22 from {plan['ssh_from']} only, denied to everyone else (Jupyter through the SSH tunnel)",
        f"  os login  {_oslogin_line(plan.get('oslogin'))}",
        f"  price     ${plan['price_per_hour']:.2f}/h while running",
        "  requests:",
    ]
    for r in plan["requests"]:
        lines.append(f"    {r['method']} {r['path']}")
    lines.append("Run it again without --dry-run to create it (--json shows the request bodies).")
    return "\n".join(lines)


def _disk_line(d: dict) -> str:
    w = d["write"]
    about = "about " if w["estimated"] else ""
    price = f"${d['price_per_month']:.2f}/month{' (estimated)' if d['price_estimated'] else ''}"
    where = " at /scratch" if d.get("mount") else ""
    return (f"{d['disk']}{where}: writes {about}{w['mib_per_s']:,.0f} MiB/s ({w['kind']}: {w['bound']}), "
            f"{price} = ${d['price_per_hour']:.3f}/h")


def _oslogin_line(found: dict | None) -> str:
    if not found or not found["checked"] or not found["enabled"]:
        detail = found["detail"] if found else "not checked"
        return f"{detail}: gcpdl's key goes in the VM's ssh-keys metadata"
    user = found["user"] or "the POSIX user OS Login creates at the first key import"
    return f"{found['detail']}: gcpdl's key goes into your OS Login profile (expires after 24 h), login as {user}"


def _render_result(r: dict) -> str:
    from gcpdl.autostop import window_label

    name = r["name"]
    gpu = f"{r['gpu_count']} x {r['gpu']}" if r["gpu"] else "none"
    verb = {"created": "Created", "started": "Started", "reused": "Already running:"}[r["action"]]
    lines = [
        f"{verb} {name} in {r['zone']}",
        f"  machine   {r['machine_type']}  GPU {gpu}{'  (Spot)' if r['spot'] else ''}",
        f"  address   {r['external_ip'] or '-'}  (SSH from {r['ssh_from']})",
        f"  price     ${r['price_per_hour']:.2f}/h while running",
    ]
    if r.get("disk_monthly") is not None:
        which = f"boot + data disk {r['data_disk']}" if r.get("data_disk") else "boot disk"
        lines.append(f"  disks     ${r['disk_monthly']:.2f}/month, running or stopped ({which})")
    if r.get("autostop_minutes"):
        lines.append(f"  autostop  after {window_label(r['autostop_minutes'])} idle; change it: gcpdl autostop {name} 2h|off")
    elif "autostop_minutes" in r:
        lines.append(f"  autostop  off: it runs (and bills) until you stop it; set: gcpdl autostop {name} 1h")
    if r.get("data_dir"):
        lines.append(f"  data      gcpdl sync gs://BUCKET/DIR lands in {r['data_dir']}/DIR (Jupyter: data/DIR)")
    ready = r.get("ready") or {}
    if isinstance(ready, dict) and ready.get("ssh"):
        lines.append(f"  ssh       {ready['ssh']}")
    if isinstance(ready, dict) and ready.get("jupyter"):
        lines.append(f"  jupyter   {ready['jupyter']}")
    down = f"gcpdl down {name}" + (" --delete-data" if r.get("data_disk") else "")
    lines.append(f"Stop the GPU bill: gcpdl stop {name}. Stop every bill: {down}")
    return "\n".join(lines)
