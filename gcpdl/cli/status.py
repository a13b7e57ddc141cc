"""`gcpdl status [NAME]`: every gcpdl VM in the project, across zones.

Read-only and on the hot path of every session, so it never imports google.cloud.compute_v1:
one aggregatedList through the lean REST session (plus one guest-attribute read per stopped VM).
"""

from __future__ import annotations

import click

from gcpdl.cli.app import App
from gcpdl.cli.options import json_option, project_option


@click.command()
@click.argument("name", required=False, metavar="[NAME]")
@project_option
@json_option
@click.pass_obj
def status(app: App, name: str | None, project: str | None, as_json: bool) -> None:
    """Show every gcpdl VM: state, zone, GPU, address, uptime and price per hour."""
    from gcpdl.compute import lifecycle
    from gcpdl.compute.adapter import Compute

    if name is not None:
        from gcpdl.spec import validate_name

        validate_name(name)
    factory = app.factory(project=project)
    compute = Compute(factory, factory.project())
    found = lifecycle.status(compute, name)
    from gcpdl.cli.lifecycle import refresh_ssh_config

    refresh_ssh_config(app, [s.instance for s in found])
    rows = [s.as_dict() for s in found]
    warned: set[str] = set()
    for s in found:
        for rule in s.open_to_world:
            if not rule.harmless and rule.rule not in warned:
                warned.add(rule.rule)
                app.warn(rule.message())
    app.emit(rows, as_json, _render)


def _uptime(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    h, m = divmod(seconds // 60, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m"


def _render(rows: list[dict]) -> str:
    if not rows:
        return "No gcpdl VMs. Create one with: gcpdl up NAME --gpu t4"
    header = ("NAME", "STATE", "ZONE", "GPU", "IP", "UPTIME", "$/H", "SPENT", "DISKS $/MO")
    table = [header]
    for r in rows:
        gpu = f"{r['gpu']}:{r['gpu_count']}" if r["gpu"] else "-"
        state = r["state"] + (" (spot)" if r["spot"] else "")
        table.append((r["name"], state, r["zone"], gpu, r["external_ip"] or "-", _uptime(r["uptime_s"]),
                      f"{r['price_per_hour']:.2f}" if r["state"] == "RUNNING" else "-",
                      f"{r['spend_since_start']:.2f}" if r.get("spend_since_start") is not None else "-",
                      f"{r['disk_monthly']:.2f}" if r.get("disk_monthly") is not None else "-"))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    for r in rows:
        if r.get("autostop_reason"):
            lines.append(f"{r['name']}: stopped by autostop ({r['autostop_reason']})")
    from gcpdl.cli.cluster import status_lines

    lines += status_lines(rows)  # one line per cluster: its nodes as a unit
    return "\n".join(lines)
