"""`gcpdl cost [NAME] [--credits N] [--json]`."""

from __future__ import annotations

import click

from gcpdl.cli.app import App
from gcpdl.cli.options import json_option, project_option

TIMEOUT = 60.0


@click.command()
@click.argument("name", metavar="[NAME]", required=False)
@click.option("--credits", "credits_", type=str, metavar="USD", help="Credits you have left, in USD (default: the credits config value).")
@project_option
@json_option
@click.pass_obj
def cost(app: App, name: str | None, credits_: str | None, project: str | None, as_json: bool) -> None:
    """Spend so far per VM, the burn rate now, and how long your credits last.

    Counts the hours each gcpdl VM ran (its run log and the API's start/stop times) at list
    price, and every disk from its creation, since disks bill while a VM is stopped.
    """
    import time

    from gcpdl.errors import NotFound
    from gcpdl.spec import validate_name

    if name is not None:
        validate_name(name)
    credits = _credits(credits_) if credits_ is not None else None
    settings = app.settings(project=project)
    if credits is None:
        credits = settings.credits
    from gcpdl import cost as cost_mod
    from gcpdl.compute.adapter import Compute

    factory = app.factory(project=project)
    compute = Compute(factory, factory.project())
    instances, disks = cost_mod.gather(compute, compute.new_deadline(TIMEOUT, "the VM and disk lists"), name)
    if name is not None and not instances and not disks:
        raise NotFound(f"No gcpdl VM or data disk named {name} in project {compute.project}.", fix="See your VMs with: gcpdl status")
    report = cost_mod.cost_report(instances, disks, time.time(), credits)
    app.emit(report.as_dict(), as_json, _render)


def _credits(raw: str) -> float:
    from gcpdl.errors import InvalidInput

    try:
        value = float(raw.strip().lstrip("$").replace(",", ""))
    except ValueError:
        raise InvalidInput(f"Invalid --credits '{raw}': expected an amount in USD like 300 or 1000.50.") from None
    if not value >= 0 or value == float("inf"):
        raise InvalidInput(f"Invalid --credits '{raw}': expected an amount in USD like 300 or 1000.50.")
    return value


def _hours(h: float) -> str:
    return f"{h:.1f} h" if h < 48 else f"{h / 24:.1f} d"


def _render(r: dict) -> str:
    from gcpdl.cli.status import human_state, table_lines
    from gcpdl.cost import delete_hint

    lines = []
    if r["vms"]:
        # the columns and the $/h of `status` (one rounding: 2 decimals), in 80 columns
        rows = [("NAME", "STATE", "ZONE", "RAN", "PRICE", "DISKS", "SPENT")]
        for v in r["vms"]:
            mark = "~" if v["approximate"] or v["estimated"] else ""
            disks = sum(d["monthly"] for d in v["disks"])
            rows.append((v["name"], human_state(v["state"]), v["zone"], _hours(v["running_hours"]),
                         f"${v['running_per_hour']:.2f}/h", f"${disks:.2f}/mo", f"${v['spend']:.2f}{mark}"))
        lines += table_lines(rows)
    for d in r["loose_disks"]:
        lines.append(f"Kept disk {d['name']} ({d['size_gb']} GB {d['disk_type']}, {d['zone']}): "
                     f"${d['monthly']:.2f}/month")
        lines.append(f"  ${d['spend']:.2f} so far. Delete it when done: {delete_hint(d['name'], d['zone'], (v['name'] for v in r['vms']))}")
    if not lines:
        lines.append("No gcpdl VMs or disks: nothing is billing.")
    burn = r["burn_per_hour"]
    lines.append(f"Spend so far: ${r['spend']:.2f}   Burn rate now: ${burn:.2f}/h (${burn * 24:.2f}/day)")
    if r["credits"] is not None:
        if r["days_left"] is None:
            lines.append(f"Credits: ${r['credits']:.2f}; nothing is billing now.")
        else:
            lines.append(f"Credits: ${r['credits']:.2f} last about {r['days_left']:.1f} days at this rate.")
    if any(v["approximate"] or v["estimated"] for v in r["vms"]):
        lines.append("~ approximate: incomplete run history, or a price estimated (region or machine).")
    lines.append(f"List prices dated {r['prices_date']} (USD, no discounts); your bill is in the console.")
    return "\n".join(lines)
