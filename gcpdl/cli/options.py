"""Shared option decorators, defined once."""

from __future__ import annotations

import click

project_option = click.option("--project", "-p", envvar=None, help="Google Cloud project id (default: config, gcloud, ADC).")
zone_option = click.option("--zone", "-z", help="Compute Engine zone, e.g. us-central1-a.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
yes_option = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
dry_run_option = click.option("--dry-run", is_flag=True, help="Show what would be done; change nothing.")


def parse_hours(value: str | None) -> float | None:
    """--max-hours: '2h', '90m', '1.5' (hours) -> hours, spelled like --autostop. Its range is
    checked in gcpdl.spec.build_spec."""
    import re

    from gcpdl.errors import InvalidInput

    if value is None:
        return None
    text = value.strip().lower()
    m = re.fullmatch(r"(-?[0-9]+(?:\.[0-9]+)?)\s*(m|min|h)", text)
    if m:
        number = float(m.group(1))
        return number / 60 if m.group(2) != "h" else number
    try:
        return float(text)  # a number alone is hours, as before; out of range is spec's to say
    except ValueError:
        raise InvalidInput(f"Invalid --max-hours '{value}': expected hours like 2h or 1.5, or minutes like 90m.") from None


def complete_vm_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    """Shell completion for a VM name: the names gcpdl's local cache remembers (no network),
    for the configured project, or every project's when none is set."""
    from click.shell_completion import CompletionItem

    try:
        from gcpdl.compute.lookup import VmCache
        from gcpdl.settings import resolve

        projects = VmCache()._read()
        try:
            project = resolve().project
        except Exception:  # a broken config file must not break the user's shell
            project = None
        names = set((projects.get(project) or {}) if project else [n for vms in projects.values() for n in vms])
    except Exception:
        return []
    return [CompletionItem(n) for n in sorted(names) if n.startswith(incomplete)]


def complete_gpus(ctx: click.Context, param: click.Parameter, incomplete: str) -> list:
    from click.shell_completion import CompletionItem

    from gcpdl.spec import GPUS

    return [CompletionItem(k, help=GPUS[k].label) for k in GPUS if k.startswith(incomplete)]


name_argument = click.argument("name", metavar="NAME", shell_complete=complete_vm_names)
