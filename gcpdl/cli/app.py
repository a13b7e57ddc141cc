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
from gcpdl.errors import Aborted, ApiDisabled, CredentialsError, GcpdlError, NotFound, PermissionDenied

# name -> "module:attribute", in the order a user meets them (the order `gcpdl --help` lists).
# Each module imports only click and light gcpdl modules at top level.
COMMANDS: dict[str, str] = {
    "up": "gcpdl.cli.up:up",
    "status": "gcpdl.cli.status:status",
    "ssh": "gcpdl.cli.ssh:ssh",
    "jupyter": "gcpdl.cli.jupyter:jupyter",
    "sync": "gcpdl.cli.sync:sync",
    "run": "gcpdl.cli.run:run",
    "ray": "gcpdl.cli.ray:ray",
    "stop": "gcpdl.cli.lifecycle:stop",
    "start": "gcpdl.cli.lifecycle:start",
    "down": "gcpdl.cli.lifecycle:down",
    "autostop": "gcpdl.cli.autostop:autostop",
    "cost": "gcpdl.cli.cost:cost",
    "doctor": "gcpdl.cli.doctor:doctor",
    "config": "gcpdl.cli.config:config",
}

# One line each for `gcpdl --help` (never cut with "..."); kept here so the top-level help
# imports no command module. tests/test_help.py checks every command has one that fits.
SHORT_HELP: dict[str, str] = {
    "up": "Create or restart a GPU VM with JupyterLab.",
    "status": "List your VMs, their state and what they cost.",
    "ssh": "A shell (or one command) on the VM.",
    "jupyter": "Open JupyterLab through an SSH tunnel.",
    "sync": "Copy a gs:// dataset onto the VM, verified.",
    "run": "Run a command on every node of a cluster (torchrun).",
    "ray": "Submit a job to a cluster's Ray through the tunnel.",
    "stop": "Stop the VM: no GPU charges, disks kept.",
    "start": "Start a stopped VM again.",
    "down": "Delete the VM (its data disk is kept).",
    "autostop": "Show or set the idle time before the VM stops.",
    "cost": "Spend so far and days of credits left.",
    "doctor": "Check your account is ready; --fix repairs it.",
    "config": "Show or set project, zone and other settings.",
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
            self._factory = ClientFactory(self.settings(**flags), on_notice=self.warn)
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
        return list(COMMANDS)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and not ctx.resilient_parsing:
            # a bare `gcpdl` is a request for help, not a usage error
            click.echo(ctx.get_help())
            ctx.exit(0)
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as e:
            # the commands are lazy, so click has no names to suggest from: give it ours
            raise click.exceptions.NoSuchCommand(e.command_name, possibilities=list(COMMANDS), ctx=ctx) from None

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SHORT_HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows, col_spacing=2)

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
        return _with_verbose(getattr(mod, attr))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Aborted as e:
            if e.exit_code != 0:
                raise UserError(e) from None
            # "n" to `up`'s price is an answer, not a failure: no "Error:", exit 0
            click.echo(e.message, err=True)
            raise click.exceptions.Exit(0)
        except GcpdlError as e:
            raise UserError(e) from None
        except click.UsageError as e:
            if isinstance(e, OneLineUsageError):
                raise
            raise OneLineUsageError(e) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            raise click.exceptions.Exit(130)


def _with_verbose(cmd: click.Command) -> click.Command:
    """Accept -v/--verbose after the subcommand too (`gcpdl up box -v`), for it and its
    subcommands; it sets the same flag as `gcpdl -v up box`."""

    def set_verbose(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        app = ctx.find_object(App)
        if value and app is not None:
            app.verbose = True

    if cmd.context_settings.get("ignore_unknown_options"):
        return cmd  # `gcpdl ssh box -- CMD -v`: the remote command's own options stay its own
    if not any("-v" in p.opts or "--verbose" in p.opts for p in cmd.params):
        # only the short flag: a long --verbose here would join click's "Did you mean" guesses
        cmd.params.append(click.Option(["-v"], is_flag=True, expose_value=False, callback=set_verbose,
                                       help="More detail on stderr (as gcpdl -v)."))
    for sub in getattr(cmd, "commands", {}).values():
        _with_verbose(sub)
    return cmd


def _is_account_error(error: GcpdlError) -> bool:
    """Errors about the Google account or project (credentials, API, billing, permissions),
    which `gcpdl doctor` checks all at once."""
    if isinstance(error, (CredentialsError, ApiDisabled, PermissionDenied)):
        return True
    text = error.message.lower()
    return "billing" in text or "no google cloud project" in text or (isinstance(error, NotFound) and text.startswith("project "))


class UserError(click.ClickException):
    """A domain error on stderr, with its exit code.

    On a terminal, for a person: `Error: PROBLEM`, the fix on its own line, and for account
    problems (credentials, API, billing, permissions) a line pointing at `gcpdl doctor`; each
    wrapped at the terminal's width (80 columns at most), never inside a word, URL or command.
    Anywhere else (a pipe, a log, CI) it stays the one line scripts grep: `Error: PROBLEM FIX`.
    """

    def __init__(self, error: GcpdlError):
        super().__init__(" ".join(error.message.split("\n")))
        self.fix = " ".join(error.fix.split("\n")) if error.fix else None
        self.exit_code = error.exit_code
        self.hint = None
        if _is_account_error(error):
            self.hint = (
                "Or let gcpdl enable it: gcpdl doctor --fix" if isinstance(error, ApiDisabled)
                else "Check the whole setup at once: gcpdl doctor"
            )

    def lines(self, width: int | None = None) -> list[str]:
        """The rendering for a terminal ``width`` columns wide, or the one line when None."""
        import textwrap

        if not width:
            return [f"Error: {self.format_message()}" + (f" {self.fix}" if self.fix else "")]

        def wrap(text: str, indent: str) -> list[str]:
            return textwrap.wrap(text, width, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)

        out = wrap(f"Error: {self.format_message()}", " " * len("Error: "))
        for text in (self.fix, self.hint):
            if text:
                out += wrap(text, "  ")
        return out

    def show(self, file: Any = None) -> None:
        click.echo("\n".join(self.lines(terminal_width())), err=True)


class OneLineUsageError(click.UsageError):
    """A command's usage error (bad option value, unknown option) as one `Error:` line that
    says where the help is, instead of click's usage block; exit code 2 as click's."""

    def __init__(self, error: click.UsageError):
        super().__init__(" ".join(error.format_message().split("\n")), ctx=error.ctx)
        self.exit_code = error.exit_code

    def show(self, file: Any = None) -> None:
        where = self.ctx.command_path if self.ctx is not None else "gcpdl"
        click.echo(f"Error: {self.format_message()} (see: {where} --help)", err=True)


def terminal_width(stream: Any = None) -> int | None:
    """Columns to wrap messages at: the terminal's, at most 80; None when not a terminal."""
    import os
    import sys

    stream = stream or sys.stderr
    try:
        if not stream.isatty():
            return None
        columns = os.get_terminal_size(stream.fileno()).columns  # this stream's, even if stdout is piped
    except (AttributeError, ValueError, OSError):
        return None
    return max(40, min(80, columns or 80))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gcpdl")
@click.option("--profile", envvar="GCPDL_PROFILE", help="Named profile from the gcpdl config file.")
@click.option("-v", "--verbose", is_flag=True, help="More detail on stderr.")
@click.pass_context
def cli(ctx: click.Context, profile: str | None, verbose: bool) -> None:
    """A GPU VM with JupyterLab and your dataset on Google Cloud, in one command.

    \b
    gcpdl doctor                check your Google account first (--fix repairs it)
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
