"""`gcpdl ray NAME -- CMD`: a job on cluster NAME's Ray, through Ray's job API over the SSH tunnel."""

from __future__ import annotations

from pathlib import Path

import click

from gcpdl.cli.app import App
from gcpdl.cli.options import json_option, project_option


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("name", metavar="NAME")
@click.option("--working-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=Path("."),
              help="Folder shipped with the job (Ray's working_dir): your code, not your data (default: .).")
@project_option
@json_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True, metavar="-- CMD...")
@click.pass_obj
def ray(app: App, name: str, working_dir: Path, project: str | None, as_json: bool, command: tuple[str, ...]) -> None:
    """Submit CMD as a Ray job to cluster NAME (made with `gcpdl up NAME --nodes N --ray`).

    The job's files are the working directory (--working-dir), its output streams here, and
    Ctrl-C stops the job. The job API is reached through an SSH tunnel to node 0.

    \b
    gcpdl ray c -- python train.py --epochs 3
    """
    import time

    from gcpdl.cluster import ray as core
    from gcpdl.cluster.nodes import running_cluster
    from gcpdl.errors import InvalidInput
    from gcpdl.spec import validate_name
    from gcpdl.ssh.session import open_transport, target_session
    from gcpdl.ssh.target import resolve_target
    from gcpdl.ssh.tunnel import Tunnel

    validate_name(name)
    words = [w for w in command if w != "--"] if command and command[0] == "--" else list(command)
    if not " ".join(words).strip():
        raise InvalidInput("No command given: gcpdl ray NAME -- CMD")
    factory = app.factory(project=project)
    found = running_cluster(factory, name)
    head = found.head
    session = target_session(factory, head.name, head.zone, report=app.say)
    app.on_close(session.close)
    st = core.state(session)
    tunnel = Tunnel(lambda: open_transport(resolve_target(factory, head.name, head.zone), report=app.say),
                    ("127.0.0.1", int(st["dashboard"])), transport=session.transport)
    tunnel.start()
    app.on_close(tunnel.close)
    api = core.JobApi(f"http://127.0.0.1:{tunnel.local_port}")
    pkg, data = core.package_dir(working_dir.resolve())
    from gcpdl.errors import GcpdlError

    try:
        uri = api.upload(pkg, data)
    except GcpdlError:
        # ray.json is there but nothing answers: the cluster was stopped (Ray does not survive that)
        raise core.RayNotRunning(f"Ray on cluster {name} does not answer (its nodes were restarted, or Ray was stopped).",
                                 fix=f"Start it again with: gcpdl up {name} --nodes {len(found.nodes)} --ray") from None
    job = api.submit(" ".join(words), uri, st.get("python_bin"))
    app.say(f"Submitted Ray job {job} to {name} (Ray {st.get('version')}, {len(found.nodes)} nodes). Ctrl-C stops it.")
    try:
        info = core.follow(api, job, lambda line: click.echo(line, err=as_json), time.sleep)
    except KeyboardInterrupt:
        api.stop(job)
        app.say(f"Stopped Ray job {job}.")
        raise click.exceptions.Exit(130)
    code = 0 if info.get("status") == "SUCCEEDED" else (info.get("driver_exit_code") or 1)
    if as_json:
        app.emit({"job": job, "status": info.get("status"), "exit_code": code, "message": info.get("message")}, True)
    if code:
        app.say(f"Ray job {job} {str(info.get('status')).lower()}: {info.get('message') or ''}".rstrip(": "))
    raise click.exceptions.Exit(int(code))
