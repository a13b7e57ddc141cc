"""The cluster side of `gcpdl up NAME --nodes N` (and the rendering of clusters elsewhere).

`up` parses and builds the VmSpec as for one VM, then hands over here; the core is
gcpdl.compute.cluster.
"""

from __future__ import annotations

from typing import Any

from gcpdl.cli.app import App


def up_cluster(app: App, vm: Any, nodes: int | None, first: str, candidates: list[str], source: str | None, *, wait: bool,
               yes: bool, as_json: bool, dry_run: bool, project: str | None, zone: str | None,
               shared: int | None = None, with_ray: bool = False) -> None:
    from gcpdl.cli import up as up_cli
    from gcpdl.compute import cluster, lifecycle
    from gcpdl.errors import InvalidInput

    if nodes is None:
        raise InvalidInput(f"{'--ray' if with_ray else '--shared'} is for a cluster: add --nodes N.")
    if with_ray and not wait and not dry_run:
        raise InvalidInput("--ray starts Ray once every node is ready: leave out --no-wait.")
    if shared is not None and not 10 <= shared <= 65536:
        raise InvalidInput(f"--shared {shared}: a shared disk is 10 to 65536 GB.")
    cluster.validate(vm.name, nodes, vm)
    settings = app.settings()
    if dry_run:
        if not settings.project:
            from gcpdl.errors import ConfigError

            raise ConfigError("No Google Cloud project set (a dry run looks nothing up).",
                              fix="Pass --project, set GCPDL_PROJECT, or run: gcpdl config set project PROJECT_ID")
        login, found = up_cli._oslogin_for_plan(app, project, zone)
        plan = cluster.plan(settings.project, first, vm, nodes, source or up_cli.DRY_RUN_IP, login=login)
        plan.plan.oslogin = found
        app.emit(plan.as_dict(), as_json, render_plan)
        return

    from gcpdl.compute import firewall
    from gcpdl.compute.adapter import Compute, prefetch

    prefetch()
    factory = app.factory(project=project, zone=zone)
    compute = Compute(factory, factory.project())
    factory.credentials()
    if source is None:
        source = firewall.ssh_source(None)

    def confirm(price: float) -> bool:
        from gcpdl.cli.options import confirm as ask

        return ask(f"These {nodes} VMs cost about ${price:.2f}/h together while they run. Create them?")

    waits = up_cli.WaitLine(vm.name)  # the nodes' stages, as `up` shows one VM's
    ctx = lifecycle.UpContext(
        compute=compute,
        zones=[first] + [z for z in candidates if z != first],
        ssh_from=source,
        progress=waits.say,
        confirm=None if yes else waits.paused(confirm),
        confirm_above=settings.confirm_above,
        ready=up_cli._ready_step(factory, waits) if wait else None,
        network_given=vm.network != "default",
    )
    try:
        result = cluster.up(ctx, vm, nodes)
        waits.close(done=True)
    finally:
        waits.close()
    if with_ray:
        start_ray(app, factory, vm.name)
    if shared is not None:
        disk = cluster.attach_shared(compute, vm.name, shared, progress=app.say)
        app.say(f"{disk} is attached read-only to every node; fill it with: gcpdl sync gs://BUCKET/PATH --on {vm.name} --shared")
    if app.verbose:
        app.say(f"{result.api_calls} Compute API requests.")
    app.emit(result.as_dict(), as_json, render_result)


def render_plan(plan: dict) -> str:
    from gcpdl.cli.up import _render_plan

    text = _render_plan(plan).splitlines()
    text[0] = (f"Plan for cluster {plan['name']}: {plan['nodes']} nodes {plan['node_names'][0]} .. {plan['node_names'][-1]} "
               f"in {plan['zone']} (project {plan['project']}), nothing created:")
    out = []
    for line in text:
        if line.startswith("  price"):
            line = (f"  price     {plan['nodes']} x ${plan['price_per_node_hour']:.2f}/h = ${plan['price_per_hour']:.2f}/h "
                    "while running")
            out.append(f"  placement {plan['placement']}")
            out.append("  cluster   all traffic between the nodes (and only theirs) allowed")
        out.append(line)
    return "\n".join(out)


def render_result(r: dict) -> str:
    verb = {"created": "Created", "started": "Started", "reused": "Already running:", "repaired": "Repaired"}[r["action"]]
    lines = [f"{verb} cluster {r['name']}: {len(r['nodes'])} nodes in {r['zone']}"]
    for n in r["nodes"]:
        gpu = f"{n['gpu_count']} x {n['gpu']}" if n["gpu"] else "no GPU"
        lines.append(f"  {n['name']:<20} {n['state']:<11} {n['machine_type']}  {gpu}{' (Spot)' if n['spot'] else ''}  "
                     f"address {n['external_ip'] or '-'}  internal {n['internal_ip'] or '-'}")
    lines.append(f"  price     ${r['price_per_hour']:.2f}/h for the cluster while running")
    lines.append(f"Run on every node: gcpdl run {r['name']} -- CMD   (MASTER_ADDR, NODE_RANK, ... set for torchrun)")
    lines.append(f"Stop paying: gcpdl stop {r['name']}  /  gcpdl down {r['name']}")
    return "\n".join(lines)


def as_cluster(app: App, compute: Any, name: str, verb: str, as_json: bool, ssh_from: str | None = None) -> bool:
    """`stop NAME` / `start NAME` where NAME is a cluster: every node, in parallel. False when
    there is no cluster NAME either (the caller's NotFound stands)."""
    from gcpdl.compute import cluster
    from gcpdl.deadline import Deadline

    if cluster.find(compute, name, Deadline(60, f"cluster {name}")) is None:
        return False
    if verb == "stop":
        nodes = cluster.stop(compute, name, progress=app.say)
    else:
        nodes = cluster.start(compute, name, progress=app.say, ssh_from=ssh_from)
        from gcpdl.cli.lifecycle import refresh_ssh_config

        refresh_ssh_config(app, nodes)
    rows = [n.summary() for n in nodes]
    app.emit(rows, as_json, lambda rs: "\n".join(
        f"{r['name']} in {r['zone']}: {r['state']}" + (f"  address {r['external_ip'] or '-'}" if verb == "start" else "")
        for r in rs))
    return True


def status_lines(rows: list[dict]) -> list[str]:
    """`status`: each cluster summed up under the table (state counts, price, what to do)."""
    clusters: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("cluster"):
            clusters.setdefault(r["cluster"], []).append(r)
    out = []
    for name, nodes in sorted(clusters.items()):
        states: dict[str, int] = {}
        for r in nodes:
            states[r["state"]] = states.get(r["state"], 0) + 1
        counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
        price = sum(r["price_per_hour"] for r in nodes if r["state"] == "RUNNING")
        line = f"cluster {name}: {len(nodes)} nodes ({counts}), ${price:.2f}/h now"
        if states.get("PREEMPTED"):
            line += f"; preempted node(s): `gcpdl up {name} --nodes {len(nodes)}` brings the cluster back whole"
        elif states.get("RUNNING") and len(states) > 1:
            line += f"; not every node runs: `gcpdl start {name}` starts the rest"
        out.append(line)
    return out


def autostop_cluster(app: App, compute: Any, name: str, minutes: int | None, as_json: bool, render: Any) -> bool:
    """`autostop NAME WINDOW` for cluster NAME: the window on every node (the nodes' agents stop
    the cluster once every node has been idle that long). False when there is no such cluster."""
    from gcpdl.autostop import set_autostop
    from gcpdl.compute import cluster
    from gcpdl.deadline import Deadline

    found = cluster.find(compute, name, Deadline(60, f"cluster {name}"))
    if found is None:
        return False
    results = cluster._each(found.nodes, lambda n: set_autostop(compute, n.name, minutes))
    rows = [r.as_dict() for r in results]
    app.emit(rows, as_json, lambda rs: "\n".join(render(r) for r in rs))
    return True


def sync_cluster(app: App, factory: Any, name: str, url: Any, dest: Any, as_json: bool, source: list[str],
                 flags: list[str], shared: bool = False) -> bool:
    """`sync gs://... --on NAME` for cluster NAME: every node fills itself from GCS, in parallel,
    under one combined progress line. False when there is no cluster NAME."""
    import os
    import sys
    import time

    import click

    from gcpdl.cli.sync import LINE_EVERY, _human
    from gcpdl.cluster.nodes import open_sessions
    from gcpdl.cluster.sync import sync_nodes
    from gcpdl.compute import cluster
    from gcpdl.compute.adapter import Compute
    from gcpdl.deadline import Deadline
    from gcpdl.errors import SyncError, SyncIncomplete
    from gcpdl.sync import remote

    if cluster.find(Compute(factory, factory.project()), name, Deadline(60, f"cluster {name}")) is None:
        return False
    found, sessions = open_sessions(app, factory, name)
    names = [n.name for n in found.nodes]
    target_dest = str(dest) if dest is not None else remote.default_dest(url.prefix, url.bucket)
    if shared:
        return _sync_shared(app, factory, found, sessions, url, dest, as_json, source, flags)
    app.say(f"Syncing {url} to {target_dest} on each of the {len(names)} nodes of {name}")
    tty = sys.stderr.isatty()
    lock = __import__("threading").Lock()
    last = [0.0, ""]

    def on_line(line: str) -> None:
        with lock:
            last[1] = line
            if tty:
                click.echo("\r" + line, nl=False, err=True)
            elif time.monotonic() - last[0] >= LINE_EVERY:
                last[0] = time.monotonic()
                app.say(line)

    def on_note(node: str, line: str) -> None:
        with lock:
            app.say(("\n" if tty else "") + f"[{node}] {line}")

    results = sync_nodes(sessions, names, [*source, target_dest, *flags], remote.forwarded_env(), on_line, on_note,
                         python=os.environ.get("GCPDL_REMOTE_PYTHON"))
    if tty:
        click.echo("", err=True)
    elif last[1]:
        app.say(last[1])  # the final combined line
    summaries = [dict(r.summary, vm=r.name) for r in results if r.summary is not None]
    data = {
        "cluster": name,
        "nodes": summaries,
        "files": sum(s.get("files", 0) for s in summaries),
        "bytes": sum(s.get("bytes", 0) for s in summaries),
        "failed": sum(s.get("failed", 0) for s in summaries),
    }
    app.emit(data, as_json, lambda d: "\n".join(f"[{s['vm']}] {_human(s)}" for s in d["nodes"]))
    bad = [r for r in results if r.exit_code != 0]
    if bad:
        err = SyncError("; ".join(f"On node {r.name}: {r.error}" for r in bad))
        code = bad[0].exit_code
        err.exit_code = code if code in (1, 2, SyncIncomplete.exit_code) else 1
        raise err
    return True


def _sync_shared(app: App, factory: Any, found: Any, sessions: list[Any], url: Any, dest: Any, as_json: bool,
                 source: list[str], flags: list[str]) -> bool:
    """`sync --on NAME --shared`: node 0 fills NAME-shared once; every node then reads it."""
    import os
    from pathlib import PurePosixPath

    from gcpdl.cli.sync import _human
    from gcpdl.cluster.shared import MOUNT_POINT, prepare_over_ssh
    from gcpdl.compute import cluster
    from gcpdl.compute.adapter import Compute
    from gcpdl.errors import InvalidInput, SyncError, SyncIncomplete
    from gcpdl.sync import remote

    rel = PurePosixPath(str(dest)) if dest is not None else PurePosixPath(url.prefix.rstrip("/").rsplit("/", 1)[-1] or url.bucket)
    if rel.is_absolute() or ".." in rel.parts:
        raise InvalidInput(f"With --shared, DEST is a folder inside the shared disk ({MOUNT_POINT}): '{dest}' is not.")
    target = f"{MOUNT_POINT}/{rel}"
    by_name = {n.name: s for n, s in zip(found.nodes, sessions)}
    compute = Compute(factory, factory.project())

    def fill(head: Any) -> Any:
        app.say(f"Syncing {url} to {target} on the shared disk, through {head.name}")
        return remote.run_remote(by_name[head.name], [*source, target, *flags], remote.forwarded_env(), app.say,
                                 python=os.environ.get("GCPDL_REMOTE_PYTHON"))

    result = cluster.fill_shared(compute, found.name, fill, prepare_over_ssh(by_name), progress=app.say)
    if result.summary is not None:
        result.summary["vm"] = f"{found.name} (shared, read-only on every node at {target})"
        app.emit(result.summary, as_json, _human)
    if result.exit_code != 0:
        err = SyncError(f"On node {found.head.name}: {result.error}")
        err.exit_code = result.exit_code if result.exit_code in (1, 2, SyncIncomplete.exit_code) else 1
        raise err
    return True


def start_ray(app: App, factory: Any, name: str, ports: Any = None, num_cpus: int | None = None) -> dict:
    """Ray's CLI on every node of cluster NAME (head on node 0), over SSH."""
    import os

    from gcpdl.cluster import ray
    from gcpdl.cluster.nodes import open_sessions

    found, sessions = open_sessions(app, factory, name)
    python = os.environ.get("GCPDL_REMOTE_PYTHON") or "python3"
    st = ray.start(found, sessions, ports or ray.RayPorts(), num_cpus=num_cpus, progress=app.say, python=python)
    app.say(f"Ray {st['version']} runs on {len(found.nodes)} nodes of {name}; submit with: gcpdl ray {name} -- python job.py")
    return st
