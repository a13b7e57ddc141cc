"""`gcpdl ssh NAME [-- CMD...]`: a shell on the VM, or one command with its exit code."""

from __future__ import annotations

import click

from gcpdl.cli.app import App
from gcpdl.cli.options import name_argument, project_option, zone_option


@click.command(context_settings={"ignore_unknown_options": True})
@name_argument
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- CMD...]")
@project_option
@zone_option
@click.pass_obj
def ssh(app: App, name: str, command: tuple[str, ...], project: str | None, zone: str | None) -> None:
    """Open a shell on VM NAME, or run CMD there and exit with its exit code.

    \b
    gcpdl ssh box                  interactive shell (system ssh, ~/.ssh/config)
    gcpdl ssh box -- nvidia-smi    run one command
    """
    import os
    import shutil
    from pathlib import Path

    from gcpdl.errors import SshError
    from gcpdl.ssh.session import target_session
    from gcpdl.ssh.sshconfig import refresh_host
    from gcpdl.ssh.target import validate_name

    validate_name(name)
    system_ssh = shutil.which("ssh")
    if not command and system_ssh is None:
        raise SshError("No `ssh` program found for an interactive shell.", fix=f"Install OpenSSH, or run one command: gcpdl ssh {name} -- CMD")
    factory = app.factory(project=project, zone=zone)
    # verifies the host key and gcpdl's key (one clear error) before handing over to ssh
    session = target_session(factory, name, zone, report=app.say)
    target = session.target
    refresh_host(name, target.host or "", target.instance_id, user=target.user, port=target.port)
    if not command:
        session.close()
        config = Path.home() / ".ssh" / "config"
        # -F: the config that holds the Include (also right when HOME is not the passwd home)
        argv = ["ssh", "-F", str(config), name]
        if os.name == "nt":  # no real exec on Windows: wait for ssh and pass its exit code on
            import subprocess

            raise click.exceptions.Exit(subprocess.call([system_ssh, *argv[1:]]))
        os.execv(system_ssh, argv)  # type: ignore[arg-type]
    app.on_close(session.close)
    out = click.get_binary_stream("stdout")
    err = click.get_binary_stream("stderr")

    def write(stream):
        def sink(data: bytes) -> None:
            stream.write(data)
            stream.flush()

        return sink

    # joined with spaces, as ssh does: `gcpdl ssh box -- 'cd /data && ls'` means what it says
    result = session.run(" ".join(command), timeout=None, stdout=write(out), stderr=write(err))
    raise click.exceptions.Exit(result.exit_code)
