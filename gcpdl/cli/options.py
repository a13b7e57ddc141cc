"""Shared option decorators, defined once."""

from __future__ import annotations

import click

project_option = click.option("--project", "-p", envvar=None, help="Google Cloud project id (default: config, gcloud, ADC).")
zone_option = click.option("--zone", "-z", help="Compute Engine zone, e.g. us-central1-a.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
yes_option = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
dry_run_option = click.option("--dry-run", is_flag=True, help="Show what would be done; change nothing.")
name_argument = click.argument("name", metavar="NAME")
