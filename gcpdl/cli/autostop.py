"""`gcpdl autostop NAME 30m|2h|off`."""

from __future__ import annotations

import click

from gcpdl.cli.app import App
from gcpdl.cli.options import ValueArgsCommand, json_option, name_argument, project_option


@click.command(cls=ValueArgsCommand)
@name_argument
@click.argument("window", metavar="[WINDOW]", required=False)
@project_option
@json_option
@click.pass_obj
def autostop(app: App, name: str, window: str | None, project: str | None, as_json: bool) -> None:
    """Set how long VM NAME may sit idle before it stops itself: 30m, 2h, or off.

    Without WINDOW, show the current setting and change nothing.

    Idle means no busy or recently used Jupyter kernel or terminal, GPU under 10%, no
    interactive SSH session and no gcpdl sync, all for the whole WINDOW.
    """
    from gcpdl.spec import parse_autostop, validate_name

    validate_name(name)
    if window is None:
        _show(app, name, project, as_json)
        return
    minutes = parse_autostop(window, what="WINDOW")  # both checked before any API call
    from gcpdl.autostop import set_autostop
    from gcpdl.compute.adapter import Compute, prefetch

    prefetch()  # setMetadata goes through compute_v1: overlap its import with the lookup
    from gcpdl.errors import NotFound

    factory = app.factory(project=project)
    compute = Compute(factory, factory.project())
    try:
        result = set_autostop(compute, name, minutes)
    except NotFound:
        from gcpdl.cli.cluster import autostop_cluster

        if not autostop_cluster(app, compute, name, minutes, as_json, _render):  # every node of cluster NAME
            raise
        return
    app.emit(result.as_dict(), as_json, _render)


def _show(app: App, name: str, project: str | None, as_json: bool) -> None:
    from gcpdl.autostop import get_autostop
    from gcpdl.compute.adapter import Compute

    factory = app.factory(project=project)
    app.emit(get_autostop(Compute(factory, factory.project()), name).as_dict(), as_json, _render_current)


def _render_current(r: dict) -> str:
    if r["minutes"]:
        return f"{r['name']} in {r['zone']}: stops after {r['minutes']} min idle. Change it: gcpdl autostop {r['name']} 2h (or off)."
    return f"{r['name']} in {r['zone']}: autostop off: it runs (and bills) until you stop it. Turn it on: gcpdl autostop {r['name']} 1h"


def _render(r: dict) -> str:
    what = f"stops after {r['minutes']} min idle" if r["minutes"] else "autostop off: it runs (and bills) until you stop it"
    if r["state"] == "RUNNING":
        when = "now"
    else:
        from gcpdl.cli.status import human_state

        when = f"when it next starts (it is {human_state(r['state'])})"
    return f"{r['name']} in {r['zone']}: {what}, from {when}."
