"""`gcpdl config show|set`."""

from __future__ import annotations

import click

from gcpdl.cli.app import App
from gcpdl.cli.options import ValueArgsCommand, json_option


@click.group()
def config() -> None:
    """Show or change gcpdl settings (config file in the platform config dir)."""


@config.command("show")
@json_option
@click.pass_obj
def show(app: App, as_json: bool) -> None:
    """Show resolved settings and where each came from."""
    from gcpdl.settings import SETTINGS, config_path

    s = app.settings()
    data = {"profile": s.profile, "config_file": str(config_path())}
    data.update({k: getattr(s, k) for k in SETTINGS})
    data["sources"] = s.sources

    def human(d: dict) -> str:
        lines = [f"profile: {d['profile']}", f"config file: {d['config_file']}"]
        for key in SETTINGS:
            value = d[key]
            if value in (None, [], ""):
                continue
            lines.append(f"{key} = {value}  ({d['sources'].get(key, 'default')})")
        return "\n".join(lines)

    app.emit(data, as_json, human)


@config.command("set", cls=ValueArgsCommand)
@click.argument("key")
@click.argument("value")
@click.pass_obj
def set_(app: App, key: str, value: str) -> None:
    """Set KEY to VALUE in the config file (for the --profile given, else default)."""
    from gcpdl.settings import write_config_value

    path = write_config_value(key, value, profile=app.profile or "default")
    app.say(f"Set {key} in {path}.")
