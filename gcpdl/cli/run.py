"""`gcpdl run NAME -- CMD`: CMD on every node of cluster NAME, with torchrun's environment."""

from __future__ import annotations

import threading

import click

from gcpdl.cli.app import App
from gcpdl.cli.options import json_option, project_option


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("name", metavar="NAME")
@click.option("--port", type=click.IntRange(1, 65535), default=29500,
              help="MASTER_PORT: where node 0 listens for the rendezvous (default: 29500).")
@click.option("--keep-going", is_flag=True, help="When a node fails, let the others finish (default: stop them).")
@project_option
@json_option
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True, metavar="-- CMD...")
@click.pass_obj
def run(app: App, name: str, port: int, keep_going: bool, project: str | None, as_json: bool, command: tuple[str, ...]) -> None:
    """Run CMD on every node of cluster NAME at once, output prefixed with the node's name.

    Each node has MASTER_ADDR (node 0's internal address), MASTER_PORT, NNODES, NODE_RANK,
    NPROC_PER_NODE (its GPUs) and WORLD_SIZE set: torchrun's multi-node contract. CMD goes to
    the node's shell as ssh sends it, so escape what the node should expand. Exit status: the
    first failing node's. Ctrl-C stops CMD on every node.

    \b
    gcpdl run c -- nvidia-smi -L
    gcpdl run c -- torchrun --nnodes=\\$NNODES --node-rank=\\$NODE_RANK \\
        --nproc-per-node=\\$NPROC_PER_NODE --master-addr=\\$MASTER_ADDR \\
        --master-port=\\$MASTER_PORT train.py
    """
    from gcpdl.cluster import run as core
    from gcpdl.cluster.nodes import open_sessions

    from gcpdl.spec import validate_name

    validate_name(name)
    words = list(command[1:] if command and command[0] == "--" else command)
    if not words or not " ".join(words).strip():
        from gcpdl.errors import InvalidInput

        raise InvalidInput("No command given: gcpdl run NAME -- CMD")
    factory = app.factory(project=project)
    cluster, sessions = open_sessions(app, factory, name)
    envs = core.contract(cluster, port)
    text = " ".join(words)
    width = max(len(n.name) for n in envs)
    lock = threading.Lock()
    labels = {e.rank: e.name for e in envs}

    def emit(rank: int, line: str) -> None:
        with lock:
            click.echo(f"[{labels[rank]:<{width}}] {line}", err=as_json)

    group = core.GroupRun(sessions, [e.rank for e in envs], [core.remote_command(e.env, text) for e in envs], emit,
                          stop_on_failure=not keep_going, notice=app.say)
    outcome = group.run()
    if as_json:
        app.emit(outcome.as_dict(), True)
    if outcome.first_failed is not None:
        app.say(f"Node {labels[outcome.first_failed]} failed first (exit {outcome.exit_code}).")
    elif outcome.interrupted:
        app.say("Interrupted.")
    raise click.exceptions.Exit(outcome.exit_code)
