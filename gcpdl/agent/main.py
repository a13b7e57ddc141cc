"""The agent's loop and command line (stdlib only). Runs as root under systemd on the VM:

    python3 -m gcpdl.agent [--gpu | --no-gpu] [--tick 60] [--stop-command 'shutdown -h now']
    python3 -m gcpdl.agent --probe-gpu     # what NVML and nvidia-smi report, as JSON
    python3 -m gcpdl.agent --once          # one look at every signal, printed; stops nothing

Clock, waiting and the stop command are injected so tests play hours of idleness in
milliseconds against a real Jupyter server.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Sequence

from gcpdl.agent import signals as sig
from gcpdl.agent.metadata import Metadata
from gcpdl.agent.policy import DEFAULT_WINDOW_MINUTES, TICK_SECONDS, Decision, IdlePolicy, parse_window

DEFAULT_STOP_COMMAND = "shutdown -h now"


def stop_reason(minutes: int, wall: float) -> str:
    at = datetime.fromtimestamp(wall, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"stopped after {minutes} min idle at {at}"


@dataclass
class Agent:
    signals: Sequence  # objects with .read() -> Reading
    metadata: Metadata
    stop: Callable[[], None]
    policy: IdlePolicy = field(default_factory=IdlePolicy)
    default_window: int | None = DEFAULT_WINDOW_MINUTES
    clock: Callable[[], float] = time.monotonic  # the window: monotonic, never the wall clock
    wall: Callable[[], float] = time.time  # only for the human-readable reason
    sleep: Callable[[float], None] = time.sleep
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)
    watch_metadata: bool = True  # long-poll the metadata server between ticks
    stopped_reason: str | None = None
    # what this node's own signals said at the last tick (for its cluster peers: gcpdl.agent.peers)
    own: dict = field(default_factory=lambda: {"idle": False, "readings": []})
    _window: int | None = None
    _etag: str | None = None

    def __post_init__(self) -> None:
        self._window = self.default_window

    def tick(self) -> Decision:
        from gcpdl.agent.peers import own_state

        readings = [s.read() for s in self.signals]
        self.own = own_state(readings)
        try:
            self._window = parse_window(self.metadata.autostop_value(), self.default_window)
        except OSError as e:  # unreachable metadata server: keep the last window, but no stop
            readings.append(sig.Reading("metadata", sig.UNKNOWN, f"metadata server unreachable: {sig._short(e)}"))
        decision = self.policy.observe(self.clock(), readings, self._window)
        if decision.stop:
            self._stop(decision)
        return decision

    def _stop(self, decision: Decision) -> None:
        reason = stop_reason(decision.window_minutes or 0, self.wall())
        try:
            self.metadata.record_stop(reason)
        except OSError as e:  # the VM is idle and billing: stop anyway, the journal has why
            self.log(f"could not record the reason as a guest attribute: {sig._short(e)}")
        self.log(reason)
        try:
            self.stop()
        except Exception as e:  # shutdown refused: keep watching, and count the window afresh
            self.log(f"stop command failed: {type(e).__name__}: {sig._short(e)}")
            self.policy.reset()
            return
        self.stopped_reason = reason

    def wait(self, seconds: float) -> None:
        """Until the next tick, returning early when the instance metadata changes."""
        start = self.clock()
        if self.watch_metadata:
            try:
                if self._etag is None:
                    self._etag = self.metadata.etag()
                etag = self.metadata.wait_for_change(self._etag, seconds)
                if etag != self._etag:
                    self._etag = etag
                    return
            except OSError:
                pass  # fall back to sleeping out the rest of the tick
        rest = seconds - (self.clock() - start)
        if rest > 0:
            self.sleep(rest)

    def run(self, max_ticks: int | None = None) -> int:
        ticks = 0
        last_state: tuple | None = None
        while max_ticks is None or ticks < max_ticks:
            try:
                decision = self.tick()
            except Exception as e:  # a bug in one tick must not kill the watch: count it as not idle
                self.policy.reset()
                self.log(f"tick failed, window restarted: {type(e).__name__}: {sig._short(e)}")
                decision = None
            ticks += 1
            if decision is not None:
                # the journal gets a line when what holds the VM up changes, not every minute
                state = (decision.window_minutes, decision.blockers and tuple(b.split(" ")[0] for b in decision.blockers))
                if state != last_state or self.stopped_reason:
                    self.log(decision.describe())
                    last_state = state
                if self.stopped_reason:
                    return 0
            self.wait(self.policy.tick_seconds)
        return 0


def run_stop_command(command: str) -> Callable[[], None]:
    def stop() -> None:
        subprocess.run(shlex.split(command), check=True)

    return stop


def probe_gpu() -> dict:
    """What each GPU reader reports, for checking the NVML path on a GPU machine in one command."""
    out: dict = {}
    for name, reader in (("nvml", sig.nvml_reader), ("nvidia_smi", sig.nvidia_smi_reader)):
        try:
            out[name] = reader()
        except Exception as e:
            out[name] = f"error: {type(e).__name__}: {sig._short(e)}"
    out["gpu_signal"] = str(sig.GpuSignal(expected=True).read())
    return out


def build_agent(args: argparse.Namespace) -> Agent:
    # the token comes from the environment (the unit's EnvironmentFile), not the command line,
    # where every user on the VM could read it
    token = args.jupyter_token or os.environ.get("JUPYTER_TOKEN", "")
    endpoint = sig.JupyterEndpoint(args.jupyter_url, token) if args.jupyter_url else None
    locate = (lambda: endpoint) if endpoint else sig.discover_jupyter
    signals = [
        sig.JupyterSignal(locate),
        sig.GpuSignal(expected=args.gpu, threshold=args.gpu_threshold),
        sig.SshSignal(),
        sig.SyncSignal(args.sync_lock),
    ]
    metadata = Metadata(args.metadata_host)
    peers = _cluster_peers(metadata)
    if peers:
        from gcpdl.agent.peers import PeersSignal

        signals.append(PeersSignal(lambda: peers, args.peer_port))
    return Agent(
        signals=signals,
        metadata=metadata,
        stop=run_stop_command(args.stop_command),
        policy=IdlePolicy(tick_seconds=args.tick),
        default_window=parse_window(args.default_window, DEFAULT_WINDOW_MINUTES),
    )


def _cluster_peers(metadata: Metadata) -> list[str]:
    """The other nodes of this VM's cluster ([] for a lone VM, or when the server cannot say)."""
    from gcpdl.agent.peers import ATTRIBUTE, parse_peers

    try:
        return parse_peers(metadata.attribute(ATTRIBUTE))
    except OSError:
        return []


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m gcpdl.agent", description="gcpdl autostop agent: stop this VM after it has been idle for the window.")
    p.add_argument("--gpu", dest="gpu", action="store_true", default=True, help="this VM has a GPU: unreadable utilisation counts as unknown (default)")
    p.add_argument("--no-gpu", dest="gpu", action="store_false", help="this VM has no GPU")
    p.add_argument("--gpu-threshold", type=float, default=sig.GPU_THRESHOLD, help="percent utilisation that counts as busy")
    p.add_argument("--tick", type=float, default=TICK_SECONDS, help="seconds between looks")
    p.add_argument("--default-window", default=str(DEFAULT_WINDOW_MINUTES), help="minutes (or off) when the gcpdl-autostop attribute is absent")
    p.add_argument("--stop-command", default=DEFAULT_STOP_COMMAND)
    p.add_argument("--metadata-host", default=None, help="host[:port] of the metadata server")
    p.add_argument("--jupyter-url", default=None, help="default: found from jupyter's runtime files")
    p.add_argument("--jupyter-token", default=None, help="default: $JUPYTER_TOKEN")
    p.add_argument("--sync-lock", default=sig.SYNC_LOCK)
    p.add_argument("--peer-port", type=int, default=8719, help="cluster nodes: where this agent tells its peers whether it is idle")
    p.add_argument("--probe-gpu", action="store_true", help="print what NVML and nvidia-smi report and exit")
    p.add_argument("--once", action="store_true", help="look once, print the readings, stop nothing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.probe_gpu:
        print(json.dumps(probe_gpu(), indent=2))
        return 0
    agent = build_agent(args)
    if args.once:
        readings = [s.read() for s in agent.signals]
        print(json.dumps({"readings": [str(r) for r in readings]}, indent=2))
        return 0
    agent.log(f"gcpdl autostop agent: tick {args.tick:g}s, default window {args.default_window}")
    if any(getattr(s, "name", "") == "peers" for s in agent.signals):
        from gcpdl.agent.peers import PeerServer

        try:
            PeerServer(lambda: agent.own, port=args.peer_port).start()  # a cluster node: the others ask it
            agent.log("cluster node: stops only when every node has been idle for the window")
        except OSError as e:  # the port is taken: the watch itself must go on
            agent.log(f"cannot tell the other nodes whether this one is idle (port {args.peer_port}: {sig._short(e)})")
    return agent.run()
