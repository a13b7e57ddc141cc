"""`gcpdl doctor`: are credentials, project, API, billing and GPU quota ready for `up`?"""

from __future__ import annotations

import click

from gcpdl.cli.app import App
from gcpdl.cli.options import json_option, project_option, zone_option


@click.command()
@click.option("--gpu", default="t4", metavar="GPU", help="GPU whose regional quota to check (default: t4).")
@click.option("--cpu-only", is_flag=True, help="Skip the GPU quota checks.")
@click.option("--spot", is_flag=True, help="Also check the preemptible (Spot) GPU quota.")
@zone_option
@project_option
@json_option
@click.pass_obj
def doctor(app: App, gpu: str, cpu_only: bool, spot: bool, zone: str | None, project: str | None, as_json: bool) -> None:
    """Check everything `gcpdl up` needs, and print the fix for anything missing."""
    from gcpdl.compute.doctor import run_checks
    from gcpdl.spec import parse_gpu, validate_zone

    key = None if cpu_only else parse_gpu(gpu)[0]
    settings = app.settings(project=project, zone=zone)
    if settings.zone:
        validate_zone(settings.zone)
    checks = run_checks(app.factory(project=project, zone=zone), key, spot, settings.zone or (settings.zones or [None])[0])
    rows = [c.as_dict() for c in checks]
    ok = all(c.ok for c in checks)
    app.emit({"ok": ok, "checks": rows}, as_json, _render)
    if not ok:
        raise SystemExit(1)


def _render(data: dict) -> str:
    lines = []
    for c in data["checks"]:
        lines.append(f"{'ok  ' if c['ok'] else 'FAIL'}  {c['name']}: {c['detail']}")
        if not c["ok"] and c["fix"]:
            lines.append(f"      fix: {c['fix']}")
    lines.append("All checks passed: gcpdl up is ready." if data["ok"] else "Some checks failed; fix them and run gcpdl doctor again.")
    return "\n".join(lines)
