"""The root click group: builds the context object and turns domain errors into `Error:` lines.

Commands live one per module and are loaded lazily (by name) so `gcpdl --help` and each
command's own help never import a Google library.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import click

from gcpdl import __version__
from gcpdl.errors import GcpdlError

# name -> "module:attribute". Each module imports only click and light gcpdl modules at top level.
COMMANDS: dict[str, str] = {
    "up": "gcpdl.cli.up:up",
    "stop": "gcpdl.cli.lifecycle:stop",
    "start": "gcpdl.cli.lifecycle:start",
    "down": "gcpdl.cli.lifecycle:down",
    "status": "gcpdl.cli.status:status",
    "doctor": "gcpdl.cli.doctor:doctor",
    "config": "gcpdl.cli.config:config",
    "ssh": "gcpdl.cli.ssh:ssh",
    "jupyter": "gcpdl.cli.jupyter:jupyter",
    "sync": "gcpdl.cli.sync:sync",
    "autostop": "gcpdl.cli.autostop:autostop",
    "cost": "gcpdl.cli.cost:cost",
    "run": "gcpdl.cli.run:run",
    "ray": "gcpdl.cli.ray:ray",
}


@dataclass
class App:
    """The context object every command receives with ``@click.pass_obj``."""

    profile: str | None = None
    verbose: bool = False
    _settings: Any = None
    _factory: Any = None
    _closers: list[Callable[[], None]] = field(default_factory=list)

    def settings(self, **flags: Any):
        """Resolve settings once; flags passed by a command (project, zone, ...) win."""
        from gcpdl import settings as settings_mod

        if self._settings is None or flags:
            self._settings = settings_mod.resolve(flags=flags, profile=self.profile)
            self._factory = None
        return self._settings

    def factory(self, **flags: Any):
        from gcpdl.clients import ClientFactory

        if self._factory is None or flags:
            self._factory = ClientFactory(self.settings(**flags))
        return self._factory

    # --- output: data to stdout, messages to stderr ----------------------------------------
    @staticmethod
    def say(message: str) -> None:
        click.echo(message, err=True)

    @staticmethod
    def warn(message: str) -> None:
        click.echo(f"Warning: {message}", err=True)

    @staticmethod
    def emit(data: Any, as_json: bool, human: Callable[[Any], str] | None = None) -> None:
        if as_json:
            click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
        elif human is not None:
            text = human(data)
            if text:
                click.echo(text)

    def on_close(self, fn: Callable[[], None]) -> None:
        self._closers.append(fn)


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:  # command not built yet
                return None
            raise
        return getattr(mod, attr)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GcpdlError as e:
            raise UserError(e) from None
        except click.UsageError as e:
            if isinstance(e, OneLineUsageError):
                raise
            raise OneLineUsageError(e) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            raise click.exceptions.Exit(130)


class UserError(click.ClickException):
    """One `Error:` line on stderr and the domain error's exit code."""

    def __init__(self, error: GcpdlError):
        message = error.message if not error.fix else f"{error.message} {error.fix}"
        super().__init__(" ".join(message.split("\n")))
        self.exit_code = error.exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True)


class OneLineUsageError(click.UsageError):
    """A command's usage error (bad option value, unknown option) as one `Error:` line that
    says where the help is, instead of click's usage block; exit code 2 as click's."""

    def __init__(self, error: click.UsageError):
        super().__init__(" ".join(error.format_message().split("\n")), ctx=error.ctx)
        self.exit_code = error.exit_code

    def show(self, file: Any = None) -> None:
        where = self.ctx.command_path if self.ctx is not None else "gcpdl"
        click.echo(f"Error: {self.format_message()} (see: {where} --help)", err=True)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gcpdl")
@click.option("--profile", envvar="GCPDL_PROFILE", help="Named profile from the gcpdl config file.")
@click.option("-v", "--verbose", is_flag=True, help="More detail on stderr.")
@click.pass_context
def cli(ctx: click.Context, profile: str | None, verbose: bool) -> None:
    """A GPU VM with JupyterLab and your dataset on Google Cloud, in one command.

    \b
    gcpdl up box --gpu t4       create (or restart) the VM
    gcpdl jupyter box           JupyterLab through an SSH tunnel
    gcpdl sync gs://b/data      copy a dataset onto the VM, verified
    gcpdl down box              delete it and stop paying
    """
    app = App(profile=profile, verbose=verbose)
    ctx.obj = app
    ctx.call_on_close(lambda: [fn() for fn in reversed(app._closers)])


def main() -> None:
    cli(prog_name="gcpdl")


if __name__ == "__main__":  # pragma: no cover
    main()
