"""`gcpdl up NAME`: create (or restart) a GPU VM. Thin: parse, validate, call the core, render."""

from __future__ import annotations

import click

from gcpdl.cli.app import App
from gcpdl.cli.options import dry_run_option, json_option, name_argument, project_option, yes_option, zone_option

DRY_RUN_IP = "YOUR.PUBLIC.IP/32"  # placeholder: a dry-run looks nothing up on the network


@click.command()
@name_argument
@click.option("--gpu", metavar="GPU[:COUNT]", help="t4, p4, p100, v100, l4, a100, a100-80gb or h100, with an optional count (t4:2). Default: t4 for a new VM; an existing VM restarts as it is.")
@click.option("--cpu-only", is_flag=True, help="No GPU.")
@click.option("--machine", metavar="TYPE", help="Machine type instead of the default for the GPU (checked for compatibility).")
@click.option("--image-family", help="Image family (default: a Deep Learning VM family for the GPU).")
@click.option("--image-project", help="Project of --image-family (default: deeplearning-platform-release).")
@click.option("--disk", metavar="GB", help="Boot disk size in GB (default 100).")
@click.option("--disk-type", help="Boot disk type: pd-balanced (default), pd-ssd, pd-standard, ...")
@click.option("--data-disk", metavar="GB", help="Also create a persistent data disk NAME-data of this size; it outlives `down`.")
@click.option("--spot", is_flag=True, help="Spot VM: much cheaper, may be preempted (it then stops and keeps its disk).")
@click.option("--autostop", metavar="60m|2h|off", help="Stop the VM after this long idle (default 60m).")
@click.option("--max-hours", type=float, metavar="N", help="Stop the VM after N hours of running, whatever happens.")
@click.option("--ssh-from", metavar="CIDR", help="Allow SSH from this range instead of your current address.")
@click.option("--network", metavar="NAME", help="VPC network for the VM and its firewall rules (default: default).")
@click.option("--subnet", metavar="NAME", help="Subnetwork in the zone's region (default: the region's own or only one).")
@click.option("--nodes", type=int, metavar="N", help="A cluster: N VMs NAME-0..NAME-{N-1} in one zone, for torchrun and Ray (see gcpdl run).")
@click.option("--shared", type=int, metavar="GB", help="With --nodes: one data disk NAME-shared, read-only on every node (fill it with: gcpdl sync ... --on NAME --shared).")
@click.option("--ray", "with_ray", is_flag=True, help="With --nodes: start a Ray cluster (head on NAME-0, the others join); submit with gcpdl ray.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait until the startup script, SSH and Jupyter are ready, and print how to connect.")
@zone_option
@project_option
@yes_option
@json_option
@dry_run_option
@click.pass_obj
def up(app: App, name: str, gpu, cpu_only, machine, image_family, image_project, disk, disk_type, data_disk, spot,
       autostop, max_hours, ssh_from, network, subnet, nodes, shared, with_ray, wait, zone, project, yes, as_json, dry_run) -> None:
    """Create the VM NAME (or start it again if it is stopped) and print how to reach it.

    \b
    gcpdl up box --gpu t4                  one T4 on n1-standard-8
    gcpdl up box --gpu a100:2 --spot       two A100s, Spot pricing
    gcpdl up box --gpu l4 --dry-run --json the exact API requests, nothing created
    """
    from gcpdl import spec as specs
    from gcpdl.compute import lifecycle

    settings = app.settings(project=project, zone=zone)
    vm = specs.build_spec(
        name, gpu=gpu, cpu_only=cpu_only, machine=machine, image_family=image_family, image_project=image_project,
        disk=disk, disk_type=disk_type, data_disk=data_disk, spot=spot, autostop=autostop, max_hours=max_hours,
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
        app.emit(plan.as_dict(), as_json, _render_plan)
        return

    from gcpdl.compute.adapter import Compute, prefetch

    prefetch()
    factory = app.factory(project=project, zone=zone)
    compute = Compute(factory, factory.project())
    factory.credentials()  # missing credentials is the likelier problem: say so before any lookup
    if source is None:
        source = firewall.ssh_source(None)
    ctx = lifecycle.UpContext(
        compute=compute,
        zones=[first] + [z for z in candidates if z != first],
        ssh_from=source,
        progress=app.say,
        confirm=None if yes else _confirm,
        confirm_above=settings.confirm_above,
        ready=_ready_step(factory, app) if wait else None,
        network_given=vm.network != "default",  # a missing `default` gets the fix that creates it
    )
    from gcpdl.compute.cluster import IsCluster

    try:
        result = lifecycle.up(ctx, vm)
    except IsCluster as e:  # `up NAME` on cluster NAME: the cluster, made whole again
        from gcpdl.cli.cluster import up_cluster

        return up_cluster(app, vm, e.nodes, first, candidates, source, wait=wait, yes=yes, as_json=as_json, dry_run=False,
                          project=project, zone=zone)
    if app.verbose:
        app.say(f"{result.api_calls} Compute API requests.")
    for diff in result.differences:
        app.warn(f"{name} differs from what you asked for: {diff}. `gcpdl down {name}` and `up` again to change it.")
    app.emit(result.as_dict(), as_json, _render_result)


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


def _ready_step(factory, app: App):
    from gcpdl.ssh.ready import ready_hook

    return ready_hook(factory, app.say)


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
    if plan["data_disk"]:
        lines.append(f"  data      {plan['data_disk']} (kept by `gcpdl down`)")
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


def _oslogin_line(found: dict | None) -> str:
    if not found or not found["checked"] or not found["enabled"]:
        detail = found["detail"] if found else "not checked"
        return f"{detail}: gcpdl's key goes in the VM's ssh-keys metadata"
    user = found["user"] or "the POSIX user OS Login creates at the first key import"
    return f"{found['detail']}: gcpdl's key goes into your OS Login profile (expires after 24 h), login as {user}"


def _render_result(r: dict) -> str:
    gpu = f"{r['gpu_count']} x {r['gpu']}" if r["gpu"] else "none"
    verb = {"created": "Created", "started": "Started", "reused": "Already running:"}[r["action"]]
    lines = [
        f"{verb} {r['name']} in {r['zone']}",
        f"  machine   {r['machine_type']}  GPU {gpu}{'  (Spot)' if r['spot'] else ''}",
        f"  address   {r['external_ip'] or '-'}  (SSH from {r['ssh_from']})",
        f"  price     ${r['price_per_hour']:.2f}/h while running",
    ]
    ready = r.get("ready") or {}
    if isinstance(ready, dict) and ready.get("ssh"):
        lines.append(f"  ssh       {ready['ssh']}")
    if isinstance(ready, dict) and ready.get("jupyter"):
        lines.append(f"  jupyter   {ready['jupyter']}")
    lines.append(f"Stop paying: gcpdl stop {r['name']}  /  gcpdl down {r['name']}")
    return "\n".join(lines)
