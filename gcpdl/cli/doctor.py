"""`gcpdl doctor`: are credentials, project, API, billing, OS Login roles and GPU quota ready for `up`?
`--fix` repairs what Google's APIs let a program repair (gcpdl.fix), asking first."""

from __future__ import annotations

import click

from gcpdl.cli.app import App
from gcpdl.cli.options import complete_gpus, json_option, project_option, yes_option, zone_option


@click.command()
@click.option("--gpu", default="t4", metavar="GPU", shell_complete=complete_gpus, help="GPU whose regional quota to check (default: t4).")
@click.option("--cpu-only", is_flag=True, help="Skip the GPU quota checks.")
@click.option("--spot", is_flag=True, help="Also check the preemptible (Spot) GPU quota.")
@click.option("--fix", "fix", is_flag=True,
              help="Enable the Compute API, pick your project and the cheapest zone for the GPU (asks first).")
@zone_option
@project_option
@yes_option
@json_option
@click.pass_obj
def doctor(app: App, gpu: str, cpu_only: bool, spot: bool, fix: bool, zone: str | None, project: str | None,
           yes: bool, as_json: bool) -> None:
    """Check everything `gcpdl up` needs, and print the fix for anything missing.

    \b
    gcpdl doctor                  check (run this first)
    gcpdl doctor --fix            enable the API, pick the cheapest zone, ...
    gcpdl doctor --gpu a100       check the quota for another GPU
    """
    from gcpdl.compute.doctor import run_checks
    from gcpdl.spec import parse_gpu, validate_zone

    key = None if cpu_only else parse_gpu(gpu)[0]
    settings = app.settings(project=project, zone=zone)
    if settings.zone:
        validate_zone(settings.zone)
    factory = app.factory(project=project, zone=zone)
    checks = run_checks(factory, key, spot, settings.zone or (settings.zones or [None])[0])
    fixed: list[str] = []
    if fix:
        fixed = _fix(app, factory, checks, key, spot, yes)
        if fixed:  # check again with what was changed (the config file is read anew)
            settings = app.settings(project=project, zone=zone)
            factory = app.factory(project=project, zone=zone)
            checks = run_checks(factory, key, spot, settings.zone or (settings.zones or [None])[0])
    rows = [c.as_dict() for c in checks]
    ok = all(c.ok for c in checks)
    data = {"ok": ok, "checks": rows}
    if fix:
        data["fixed"] = fixed
    app.emit(data, as_json, _render)
    if not ok:
        raise SystemExit(1)


def _fix(app: App, factory, checks, gpu: str | None, spot: bool, yes: bool) -> list[str]:
    """Ask, then apply, each repair gcpdl.fix plans; the zone last, once Compute answers."""
    from gcpdl import fix as fixes
    from gcpdl.compute.doctor import run_checks

    def ask(step) -> bool:
        return yes or click.confirm(step.question, default=True, err=True)

    profile = app.profile or "default"
    done: list[str] = []
    if any(c.name == "project" and not c.ok for c in checks):
        step, advice = fixes.project_step(factory, profile)
        if advice:
            app.say(advice)
        if step is None or not ask(step):
            return done
        done.append(step.apply())
        app.say(done[-1])
        checks = run_checks(factory, gpu, spot, factory.settings.zone or (factory.settings.zones or [None])[0])
    compute_ok = any(c.name == "compute api" and c.ok for c in checks)
    for step in fixes.plan(factory, checks, gpu, spot, profile=profile):
        if ask(step):
            done.append(step.apply())
            app.say(done[-1])
            compute_ok |= step.key == "compute api"
    if gpu and compute_ok:
        from gcpdl.compute.adapter import Compute

        step = fixes.zone_step(factory, Compute(factory, factory.project()), gpu, spot, profile=profile)
        if step is not None and ask(step):
            done.append(step.apply())
            app.say(done[-1])
    if not done:
        app.say("Nothing that gcpdl can fix by itself; the checks below say what to do.")
    return done


def _render(data: dict) -> str:
    lines = []
    for c in data["checks"]:
        lines.append(f"{'ok  ' if c['ok'] else 'FAIL'}  {c['name']}: {c['detail']}")
        if not c["ok"] and c["fix"]:
            lines.append(f"      fix: {c['fix']}")
    if data["ok"]:
        lines.append("All checks passed: gcpdl up is ready.")
    elif "fixed" in data:
        lines.append("Some checks failed; fix them as shown and run gcpdl doctor again.")
    else:
        lines.append("Some checks failed: gcpdl doctor --fix repairs what it can; then fix the rest as shown.")
    return "\n".join(lines)
