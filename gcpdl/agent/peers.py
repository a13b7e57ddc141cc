"""Clusters: a node stops only when every node of its cluster has been idle for the window (stdlib only).

Each node's agent answers `GET /` on PEER_PORT with its own idleness (its own signals only, never
its view of the peers: two nodes waiting on each other would otherwise never stop). The
``peers`` signal reads every other node (names from the instance attribute
``gcpdl-cluster-peers``, resolved by the VPC's internal DNS; the cluster's firewall rule admits
the nodes to each other and no one else from outside): idle only when all of them are.

A peer that does not answer counts as idle: it has stopped (its own agent stopped it once the
whole cluster was idle, or it was preempted), and a node that waited on a stopped peer would
bill forever. The node's own signals still keep it up while anything runs on it.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Sequence

from gcpdl.agent.signals import BUSY, IDLE, Reading, _short

PEER_PORT = 8719
ATTRIBUTE = "gcpdl-cluster-peers"
TIMEOUT = 3.0


def own_state(readings: Sequence[Reading]) -> dict:
    """What this node tells its peers: idle when every one of its own signals is."""
    mine = [r for r in readings if r.signal != PeersSignal.name]
    return {"idle": bool(mine) and all(r.state == IDLE for r in mine), "readings": [str(r) for r in mine]}


def _fetch(host: str, port: int, timeout: float) -> dict:
    with urllib.request.urlopen(f"http://{host}:{port}/", timeout=timeout) as r:  # noqa: S310 - peer on the VPC
        return json.loads(r.read(4096) or b"{}")


class PeersSignal:
    name = "peers"

    def __init__(self, peers: Callable[[], Sequence[str]], port: int = PEER_PORT,
                 fetch: Callable[[str, int, float], dict] = _fetch, timeout: float = TIMEOUT):
        self.peers, self.port, self.fetch, self.timeout = peers, port, fetch, timeout

    def read(self) -> Reading:
        busy, gone = [], []
        for host in self.peers():
            try:
                state = self.fetch(host, self.port, self.timeout)
            except (OSError, ValueError) as e:
                gone.append(f"{host} ({_short(e)})")
                continue
            if not state.get("idle"):
                busy.append(host)
        if busy:
            return Reading(self.name, BUSY, "busy: " + ", ".join(busy))
        return Reading(self.name, IDLE, ("not answering, taken as stopped: " + "; ".join(gone)) if gone else "")


class PeerServer:
    """Serves ``state()`` (own_state of the last tick) as JSON on ``host:port``, in a daemon thread."""

    def __init__(self, state: Callable[[], dict], host: str = "0.0.0.0", port: int = PEER_PORT):  # noqa: S104 - the VPC only
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                data = json.dumps(owner.state()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.state = state
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="gcpdl-peers", daemon=True)

    def start(self) -> "PeerServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def parse_peers(raw: str | None) -> list[str]:
    return [p.strip() for p in (raw or "").split(",") if p.strip()]
