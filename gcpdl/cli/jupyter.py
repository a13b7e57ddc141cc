"""`gcpdl jupyter NAME`: JupyterLab on the VM through a self-healing SSH tunnel."""

from __future__ import annotations

import click

from gcpdl.cli.app import App
from gcpdl.cli.options import json_option, name_argument, project_option, zone_option

DEFAULT_LOCAL_PORT = 8888


@click.command()
@name_argument
@click.option("--port", type=click.IntRange(1, 65535), help="Local port (default: 8888 or the next free one).")
@click.option("--no-browser", is_flag=True, envvar="GCPDL_NO_BROWSER", help="Print the URL; do not open a browser.")
@project_option
@zone_option
@json_option
@click.pass_obj
def jupyter(app: App, name: str, port: int | None, no_browser: bool, project: str | None, zone: str | None, as_json: bool) -> None:
    """Open JupyterLab on VM NAME through an SSH tunnel (Ctrl-C closes it).

    Jupyter listens on the VM's loopback only; nothing is opened to the internet.
    """
    from gcpdl.jupyter import JupyterNotRunning, check_reachable, find_server
    from gcpdl.ssh.session import open_transport, target_session
    from gcpdl.ssh.sshconfig import refresh_host
    from gcpdl.ssh.target import resolve_target, validate_name
    from gcpdl.ssh.tunnel import Tunnel, TunnelEvent, bind_local

    validate_name(name)
    # the local port first: a busy --port is an error before anything is asked of Google
    listener = bind_local(port, default=DEFAULT_LOCAL_PORT)
    app.on_close(listener.close)
    factory = app.factory(project=project, zone=zone)
    from gcpdl.errors import NotFound

    cluster = None
    try:
        session = target_session(factory, name, zone, report=app.say)
    except NotFound as no_vm:
        from gcpdl.cluster.nodes import running_cluster

        try:  # a cluster: Jupyter on node 0 (and Ray's dashboard, when Ray runs there)
            cluster, name = name, running_cluster(factory, name).head.name
        except NotFound:
            raise no_vm from None
        session = target_session(factory, name, zone, report=app.say)
    app.on_close(session.close)
    target = session.target
    refresh_host(name, target.host or "", target.instance_id, user=target.user, port=target.port)
    try:
        server = find_server(session)
        check_reachable(session, server)
    except JupyterNotRunning as e:
        for line in e.details:
            app.say(f"  {line}")
        raise

    def reconnect():
        # look the VM up again (the cache makes it one GET): a restarted VM comes back with a new IP
        fresh = resolve_target(factory, name, zone)
        return open_transport(fresh, report=app.say)

    def on_event(event: TunnelEvent) -> None:
        if event.kind != "channel-failed" or app.verbose:
            app.say(event.message)

    tunnel = Tunnel(reconnect, server.remote, listener=listener, transport=session.transport, on_event=on_event)
    tunnel.start()
    app.on_close(tunnel.close)
    dashboard = _ray_dashboard(app, session, reconnect, on_event) if cluster else None
    try:
        url = server.url(tunnel.local_port)
        # the token is in the URL on stdout only; messages on stderr show it without
        app.emit(
            {"name": name, "url": url, "local_port": tunnel.local_port, "remote_port": server.port,
             **({"cluster": cluster, "ray_dashboard": dashboard} if cluster else {})},
            as_json,
            lambda d: d["url"],
        )
        app.say(f"Jupyter on {name} is at {server.url(tunnel.local_port, with_token=False)} (tunnel over SSH). Ctrl-C closes it.")
        if not no_browser:
            from gcpdl.jupyter import open_browser, redirect_path
            from gcpdl.settings import state_dir

            # the browser gets a 0600 redirect file: its command line is readable by any local user.
            # Its removal is arranged before it exists, so a Ctrl-C at any moment leaves none.
            page = redirect_path(state_dir() / "jupyter", name)
            app.on_close(lambda: page.unlink(missing_ok=True))
            open_browser(url, state_dir() / "jupyter", name)
        tunnel.wait()
    except KeyboardInterrupt:  # Ctrl-C is how a tunnel is meant to end: exit 0
        app.say("Tunnel closed.")
    finally:
        tunnel.close()


def _ray_dashboard(app: App, session, reconnect, on_event) -> str | None:
    """Ray's dashboard on node 0 through a second tunnel over the same connection; its URL, or
    None when Ray does not run on the cluster."""
    from gcpdl.cluster.ray import RayNotRunning, state
    from gcpdl.ssh.tunnel import Tunnel

    try:
        st = state(session)
    except RayNotRunning:
        return None
    t = Tunnel(reconnect, ("127.0.0.1", int(st["dashboard"])), transport=session.transport, on_event=on_event).start()
    app.on_close(t.close)
    url = f"http://127.0.0.1:{t.local_port}/"
    app.say(f"Ray's dashboard is at {url} (same tunnel).")
    return url
