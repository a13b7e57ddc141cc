"""Shared option decorators, defined once."""

from __future__ import annotations

import click

project_option = click.option("--project", "-p", envvar=None, help="Google Cloud project id (default: config, gcloud, ADC).")
zone_option = click.option("--zone", "-z", help="Compute Engine zone, e.g. us-central1-a.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
yes_option = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
dry_run_option = click.option("--dry-run", is_flag=True, help="Show what would be done; change nothing.")
name_argument = click.argument("name", metavar="NAME")


def parse_hours(value: str | None) -> float | None:
    """--max-hours: '2h', '90m', '1.5' (hours) -> hours, spelled like --autostop. Its range is
    checked in gcpdl.spec.build_spec."""
    import re

    from gcpdl.errors import InvalidInput

    if value is None:
        return None
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*(m|min|h)?", value.strip().lower())
    if not m:
        raise InvalidInput(f"Invalid --max-hours '{value}': expected hours like 2h or 1.5, or minutes like 90m.")
    number = float(m.group(1))
    return number / 60 if m.group(2) in ("m", "min") else number
