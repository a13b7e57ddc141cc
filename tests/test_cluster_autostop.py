"""Autostop on a cluster: a node stops only when every node has been idle for the window.

Two real agents (gcpdl.agent.main.Agent) with their peer servers on 127.0.0.2 and 127.0.0.3
(real HTTP between them, as between nodes on the VPC), simulated minutes on an injected clock.
"""

from __future__ import annotations

import pytest

from gcpdl.agent.main import Agent
from gcpdl.agent.peers import PeerServer, PeersSignal, parse_peers
from gcpdl.agent.policy import IdlePolicy
from gcpdl.agent.signals import BUSY, IDLE, Reading
from tests.fixtures.cluster import _port_free_on_all

WINDOW = 5  # minutes (the agent's smallest)


class Switch:
    """This node's own activity, set by the test."""

    name = "work"

    def __init__(self) -> None:
        self.state = IDLE

    def read(self) -> Reading:
        return Reading(self.name, self.state)


class Meta:
    """The metadata server as far as Agent.tick uses it (the window; where the reason goes)."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def autostop_value(self) -> str:
        return str(WINDOW)

    def record_stop(self, reason: str) -> None:
        self.reason = reason


class Node:
    def __init__(self, address: str, peer: str, port: int, clock) -> None:
        self.work = Switch()
        self.stopped = False
        self.agent = Agent(signals=[self.work, PeersSignal(lambda: [peer], port, timeout=2.0)], metadata=Meta(),
                           stop=self._stop, policy=IdlePolicy(tick_seconds=60), clock=clock, watch_metadata=False)
        self.server = PeerServer(lambda: self.agent.own, host=address, port=port).start()

    def _stop(self) -> None:
        self.stopped = True


@pytest.fixture
def pair():
    t = [0.0]
    port = _port_free_on_all(["127.0.0.2", "127.0.0.3"])
    a = Node("127.0.0.2", "127.0.0.3", port, lambda: t[0])
    b = Node("127.0.0.3", "127.0.0.2", port, lambda: t[0])

    def minutes(n: int) -> int | None:
        """Tick both agents once a simulated minute; the minute the first of them stopped."""
        running = [node for node in (a, b) if not node.stopped]
        for m in range(n):
            t[0] += 60
            for node in running:
                if not node.stopped:
                    node.agent.tick()
            if any(node.stopped for node in running):
                return m + 1
        return None

    yield a, b, minutes
    for node in (a, b):
        try:
            node.server.stop()
        except OSError:
            pass


def test_an_idle_node_waits_for_its_busy_peer(pair):
    a, b, minutes = pair
    b.work.state = BUSY
    assert minutes(3 * WINDOW) is None  # A is idle all along, but B works: nobody stops
    assert not a.stopped and not b.stopped
    assert a.agent.own["idle"] and not b.agent.own["idle"]
    b.work.state = IDLE
    stopped_at = minutes(3 * WINDOW)
    assert stopped_at is not None and stopped_at <= WINDOW + 2
    minutes(2)  # the other one follows within a tick or two
    assert a.stopped and b.stopped


def test_peers_waiting_on_each_other_do_not_deadlock(pair):
    """Each serves its OWN idleness, not its view of the peers: two idle nodes stop."""
    a, b, minutes = pair
    assert minutes(3 * WINDOW) is not None
    minutes(2)
    assert a.stopped and b.stopped


def test_a_stopped_peer_counts_as_idle(pair):
    a, b, minutes = pair
    b.work.state = BUSY
    minutes(2)
    b.server.stop()  # B is gone (preempted, or stopped): A must not bill forever waiting for it
    b.stopped = True
    assert minutes(3 * WINDOW) is not None and a.stopped
    assert a.agent.metadata.reason is not None


def test_node_bodies_name_their_peers():
    from gcpdl.compute import requests as rq
    from gcpdl.spec import build_spec

    body = rq.node_body("p", "us-central1-a", build_spec("c-1", gpu="l4"), "c", 1, 3, None, ssh_keys="", startup_script="#", now=0)
    items = {i["key"]: i["value"] for i in body["metadata"]["items"]}
    assert parse_peers(items["gcpdl-cluster-peers"]) == ["c-0", "c-2"]


def test_peers_module_ships_with_the_agent():
    from gcpdl.agent import agent_sources

    assert "gcpdl/agent/peers.py" in agent_sources()
