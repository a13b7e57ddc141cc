"""Shared option decorators, defined once."""

from __future__ import annotations

import re
from typing import Any

import click

project_option = click.option("--project", "-p", envvar=None, help="Google Cloud project id (default: config, gcloud, ADC).")
zone_option = click.option("--zone", "-z", help="Compute Engine zone, e.g. us-central1-a.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout.")
yes_option = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
dry_run_option = click.option("--dry-run", is_flag=True, help="Show what would be done; change nothing.")


_NUMBER_LIKE = re.compile(r"^-[0-9.]")


class ValueArgsCommand(click.Command):
    """A command whose positional values may be negative numbers (`config set confirm_above -1`,
    `autostop box -5`). Plain click reads them as unknown options ("No such option '-5'"); here
    they reach the command's own validation, which says what is wrong with the value. Any other
    unknown dash word is still "No such option", as click says it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["context_settings"] = {**(kwargs.get("context_settings") or {}), "ignore_unknown_options": True}
        super().__init__(*args, **kwargs)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        known: dict[str, bool] = {name: False for name in ctx.help_option_names}  # name -> takes a value
        for param in self.params:
            if isinstance(param, click.Option):
                for name in param.opts + param.secondary_opts:
                    known[name] = not (param.is_flag or param.count)
        skip = False
        for arg in args:
            if skip:  # the value of the option before it, whatever it looks like
                skip = False
                continue
            if arg == "--":
                break
            name = arg.split("=", 1)[0]
            if arg.startswith("-") and len(arg) > 1 and not _NUMBER_LIKE.match(arg):
                if name not in known:
                    raise click.NoSuchOption(name, ctx=ctx)
                skip = known[name] and "=" not in arg
        return super().parse_args(ctx, args)


def confirm(question: str) -> bool:
    """click.confirm, but with no terminal (stdin closed or at its end, as in CI or a pipe) say
    so and how to go on, instead of click's bare "Aborted!"."""
    try:
        return click.confirm(question, default=False, err=True)
    except click.Abort:
        import sys

        if sys.stdin is None or not sys.stdin.isatty():
            from gcpdl.errors import InvalidInput

            click.echo("", err=True)  # end the prompt's line: the error gets its own

            raise InvalidInput("no terminal to confirm: pass --yes") from None
        raise


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
