"""A cluster's nodes, reached over SSH together (for `run`, `ray`, `sync --on`)."""

from __future__ import annotations

from typing import Any

from gcpdl.deadline import Deadline
from gcpdl.errors import VmNotRunning

LOOKUP_TIMEOUT = 60.0


def running_cluster(factory: Any, name: str) -> Any:
    """The cluster (gcpdl.compute.cluster.Cluster), every node of it present and RUNNING."""
    from gcpdl.compute import cluster as cl
    from gcpdl.compute.adapter import Compute

    compute = Compute(factory, factory.project())
    found = cl.require(compute, name, Deadline(LOOKUP_TIMEOUT, f"the nodes of cluster {name}"))
    missing = found.missing()
    if missing:
        raise VmNotRunning(f"Cluster {name} is missing node(s) {', '.join(cl.node_name(name, k) for k in missing)}.",
                           fix=f"Make it whole again with: gcpdl up {name} --nodes {found.size}")
    down = [n for n in found.nodes if n.status != "RUNNING"]
    if down:
        states = ", ".join(f"{n.name} {n.state.lower()}" for n in down)
        raise VmNotRunning(f"Not every node of cluster {name} is running ({states}).", fix=f"Start it with: gcpdl start {name}")
    return found


def open_sessions(app: Any, factory: Any, name: str) -> tuple[Any, list[Any]]:
    """(cluster, one verified SSH session per node in rank order), opened in parallel; closed
    when the command ends."""
    from gcpdl.compute.cluster import _each
    from gcpdl.ssh.session import target_session

    found = running_cluster(factory, name)
    sessions = _each(found.nodes, lambda n: target_session(factory, n.name, n.zone))
    for s in sessions:
        app.on_close(s.close)
    return found, sessions
