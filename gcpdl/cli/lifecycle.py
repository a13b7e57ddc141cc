"""`gcpdl stop`, `gcpdl start`, `gcpdl down`."""

from __future__ import annotations

import click

from gcpdl.cli.app import App
from gcpdl.cli.options import confirm as ask, json_option, name_argument, project_option, yes_option


def _compute(app: App, project: str | None):
    from gcpdl.compute.adapter import Compute, prefetch

    prefetch()  # stop/start/down mutate: overlap the compute_v1 import with the lookup
    factory = app.factory(project=project)
    return Compute(factory, factory.project())


def _validate(name: str) -> None:
    from gcpdl.spec import validate_name

    validate_name(name)


def ssh_config_reads(app: App, instances) -> list:
    """For each running VM: (instance, published host keys, login user) or (instance, error).
    Every VM's reads at once: one round trip, not one per VM."""
    from concurrent.futures import ThreadPoolExecutor

    from gcpdl.errors import GcpdlError
    from gcpdl.ssh.target import guest_hostkeys, login_user

    factory = app.factory()
    running = [i for i in instances if i.status == "RUNNING" and i.external_ip and i.instance_id]

    def reads(inst):
        # The block says StrictHostKeyChecking yes: a VM this laptop never reached (made on
        # another one) needs its published keys pinned, or `ssh NAME` refuses it; and a key
        # pinned earlier is re-checked against them every time (one read per running VM).
        try:
            keys = guest_hostkeys(factory, factory.project(), inst.zone, inst.name)
            return inst, keys, login_user(factory, inst.metadata, write=False).user  # OS Login's user where it is on
        except (OSError, GcpdlError) as e:
            return inst, e

    if not running:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(running)), thread_name_prefix="gcpdl-sshcfg") as pool:
        return list(pool.map(reads, running))


def refresh_ssh_config(app: App, instances, reads: list | None = None) -> None:
    """Point `ssh NAME` (and scp, rsync, VS Code) at each running VM's current address.
    Best effort: a failure here never fails the command. ``reads``: ssh_config_reads' answer,
    when the caller made them already."""
    from gcpdl.errors import GcpdlError
    from gcpdl.ssh.sshconfig import refresh_host

    settings = app.settings()
    for found in ssh_config_reads(app, instances) if reads is None else reads:
        inst = found[0]
        try:
            if len(found) == 2:
                raise found[1]
            _, keys, user = found
            if not user:  # OS Login, and this account never logged in: `gcpdl ssh` writes it
                continue
            refresh_host(inst.name, inst.external_ip, inst.instance_id, user=user, port=settings.ssh_port,
                         host_keys=keys, report=app.warn)
        except (OSError, GcpdlError) as e:
            app.warn(f"Could not update the ssh config entry for {inst.name}: {e}")


@click.command()
@name_argument
@project_option
@json_option
@click.pass_obj
def stop(app: App, name: str, project: str | None, as_json: bool) -> None:
    """Stop the VM NAME: GPU and CPU billing stop, its disks are kept (and still billed)."""
    from gcpdl.compute import lifecycle

    _validate(name)
    compute = _compute(app, project)
    from gcpdl.errors import NotFound

    try:
        inst = lifecycle.stop(compute, name, progress=app.say)
    except NotFound:
        from gcpdl.cli.cluster import as_cluster

        if not as_cluster(app, compute, name, "stop", as_json):  # `stop NAME` stops every node of cluster NAME
            raise
        return
    app.emit(inst.summary(), as_json, lambda r: f"{r['name']} in {r['zone']}: {r['state']}")


@click.command()
@name_argument
@project_option
@json_option
@click.pass_obj
def start(app: App, name: str, project: str | None, as_json: bool) -> None:
    """Start the stopped VM NAME again."""
    from gcpdl.compute import lifecycle

    _validate(name)
    compute = _compute(app, project)
    from gcpdl.errors import NotFound

    source = _ssh_source(app)
    try:
        inst = lifecycle.start(compute, name, progress=app.say, ssh_from=source)
    except NotFound:
        from gcpdl.cli.cluster import as_cluster

        if not as_cluster(app, compute, name, "start", as_json, ssh_from=source):
            raise
        return
    refresh_ssh_config(app, [inst])  # a restarted VM usually has a new ephemeral address
    app.emit(inst.summary(), as_json, lambda r: f"{r['name']} in {r['zone']}: {r['state']}  address {r['external_ip'] or '-'}")


def _ssh_source(app: App) -> str | None:
    """The source the SSH rule should allow now (the ssh_from setting, or this laptop's address),
    or None with a warning when it cannot be found: starting the VM matters more."""
    from gcpdl.compute import firewall
    from gcpdl.errors import InvalidInput, GcpdlError
    from gcpdl.spec import validate_cidr

    settings = app.settings()
    if settings.ssh_from:
        return validate_cidr(settings.ssh_from)
    try:
        return firewall.ssh_source(None)
    except InvalidInput:
        raise
    except GcpdlError as e:
        app.warn(f"{e.message} The SSH rule keeps its address; pass it with: gcpdl up NAME --ssh-from CIDR")
        return None


@click.command()
@name_argument
@click.option("--delete-data", is_flag=True, help="Also delete the data disk NAME-data (default: keep it).")
@project_option
@yes_option
@json_option
@click.pass_obj
def down(app: App, name: str, delete_data: bool, project: str | None, yes: bool, as_json: bool) -> None:
    """Delete the VM NAME, its boot disk and its SSH firewall rule. The data disk is kept."""
    from gcpdl.compute import lifecycle

    _validate(name)
    compute = _compute(app, project)

    def confirm(what: str) -> bool:
        extra = " and its data disk" if delete_data else ""
        return ask(f"Delete {what}{extra}? This cannot be undone.")

    result = lifecycle.down(compute, name, delete_data=delete_data, confirm=None if yes else confirm, progress=app.say)
    from gcpdl.pricing import data_disk_reminder, region_of

    for size_gb, disk_type, zone in result.kept_disks:
        app.say(data_disk_reminder(size_gb, disk_type, region_of(zone)))
    from gcpdl.ssh.sshconfig import remove_host

    # a cluster's nodes each had an entry: `ssh NAME-k`
    hosts = [name] + [d.split()[1] for d in result.deleted if d.startswith("instance ") and d.split()[1] != name]
    for host in hosts:
        try:
            if remove_host(host):  # `ssh NAME` would otherwise point at a deleted VM's address
                result.deleted.append(f"ssh config entry {host}")
        except OSError as e:
            app.warn(f"Could not remove {host} from the gcpdl ssh config: {e}")
    app.emit(result.as_dict(), as_json, _render)


def _render(r: dict) -> str:
    lines = [f"Deleted {', '.join(r['deleted'])}." if r["deleted"] else "Nothing to delete."]
    if r["kept"]:
        lines.append(f"Kept {', '.join(r['kept'])} (gcpdl down {r['name']} --delete-data removes it).")
    return "\n".join(lines)
