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
    """Show every gcpdl VM and kept data disk: state, zone, GPU, uptime, price, autostop.

    PRICE is $/h for a running VM (machine + GPUs), and $/month for what bills while nothing
    runs: a stopped VM's disks, a data disk kept by `down`. The VM's address is in --json.
    """
    from gcpdl.compute import lifecycle
    from gcpdl.compute.adapter import Compute

    if name is not None:
        from gcpdl.spec import validate_name

        validate_name(name)
    factory = app.factory(project=project)
    compute = Compute(factory, factory.project())
    from gcpdl.cli.lifecycle import refresh_ssh_config, ssh_config_reads

    # the ssh config's reads (host keys, the OS Login user) go out as soon as the VMs are listed
    report = lifecycle.status_report(compute, name, after_list=lambda vms: ssh_config_reads(app, vms))
    found = report.vms
    refresh_ssh_config(app, [s.instance for s in found], report.extra)
    rows = report.rows()
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


# GCE says TERMINATED for a stopped VM (it means "deleted" on AWS); people read STOPPED.
HUMAN_STATES = {"TERMINATED": "STOPPED"}


def human_state(state: str) -> str:
    return HUMAN_STATES.get(state, state)


def _price(r: dict) -> str:
    if r["kind"] == "vm" and r["state"] == "RUNNING":
        return f"${r['price_per_hour']:.2f}/h"
    return f"${r['disk_monthly']:.2f}/mo" if r.get("disk_monthly") is not None else "-"


def table_lines(table: list[tuple]) -> list[str]:
    """Rows (the header first) as left-aligned columns two spaces apart, as narrow as they allow."""
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]


def _render(rows: list[dict]) -> str:
    if not rows:
        return "No gcpdl VMs. Create one with: gcpdl up NAME --gpu t4"
    header = ("NAME", "STATE", "ZONE", "GPU", "UPTIME", "PRICE", "SPENT", "AUTOSTOP")
    table = [header]
    for r in rows:
        if r["kind"] == "disk":
            table.append((r["name"], "DISK ONLY", r["zone"], "-", "-", _price(r), "-", "-"))
            continue
        gpu = (r["gpu"] if r["gpu_count"] == 1 else f"{r['gpu']}:{r['gpu_count']}") if r["gpu"] else "-"
        table.append((r["name"], human_state(r["state"]), r["zone"], gpu + ("*" if r["spot"] else ""), _uptime(r["uptime_s"]),
                      _price(r), f"${r['spend_since_start']:.2f}" if r.get("spend_since_start") is not None else "-",
                      r["autostop"]))
    lines = table_lines(table)
    if any(r.get("spot") for r in rows):
        lines.append("* Spot VM: cheaper, and Google may stop it at any time.")
    for r in rows:
        if r.get("autostop_reason"):
            lines.append(f"{r['name']}: stopped by autostop ({r['autostop_reason']})")
    for r in rows:
        if r["kind"] == "disk":
            from gcpdl.cost import delete_hint

            hint = delete_hint(r["name"], r["zone"], (v["name"] for v in rows if v["kind"] == "vm"))
            lines.append(f"{r['name']}: kept data disk, ${r['disk_monthly']:.2f}/month until: {hint}")
    from gcpdl.cli.cluster import status_lines

    lines += status_lines(rows)  # one line per cluster: its nodes as a unit
    return "\n".join(lines)
