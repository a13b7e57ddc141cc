"""`gcpdl run NAME -- CMD`: one command on every node of a cluster, torchrun's contract set.

Every node gets, exported before CMD runs (https://pytorch.org/docs/stable/elastic/run.html):
  MASTER_ADDR     node 0's internal address (the nodes reach each other through the cluster rule)
  MASTER_PORT     29500 unless --port says otherwise
  NNODES          how many nodes
  NODE_RANK       this node's rank, 0 .. NNODES-1 (its name is NAME-RANK)
  NPROC_PER_NODE  GPUs per node (1 on a CPU-only node)
  WORLD_SIZE      NNODES x NPROC_PER_NODE
so `torchrun --nnodes=$NNODES --node-rank=$NODE_RANK --nproc-per-node=$NPROC_PER_NODE
--master-addr=$MASTER_ADDR --master-port=$MASTER_PORT train.py` is the same line on every node.

CMD reaches the remote login shell as ssh(1) sends it: the words joined by spaces, so `\\$NODE_RANK`
(escaped from the local shell) is expanded on the node.

Each node's command runs on a pseudo-terminal: Ctrl-C here is a Ctrl-C there (the terminal's
interrupt character reaches the whole foreground process group, torchrun and its workers alike),
and if this laptop goes away the closed terminal hangs the command up (SIGHUP): nothing is left
running on a node by accident. Nothing here prints; lines go to the caller's ``emit``.
"""

from __future__ import annotations

import queue
import shlex
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from gcpdl.errors import GcpdlError

MASTER_PORT = 29500
INTERRUPT = b"\x03"  # the terminal's interrupt character: SIGINT to the foreground process group
# After Ctrl-C, how long the nodes get to exit on their own before their terminals are closed
# (SIGHUP). torchrun forwards SIGINT to its workers and waits for them.
INTERRUPT_GRACE = 10.0
PTY_WIDTH = 200  # wide: a prefixed line should not wrap on the node's side too
POLL = 0.2  # how often the waiting thread looks up (so Ctrl-C is seen at once)

Emit = Callable[[int, str], None]


@dataclass(frozen=True)
class NodeEnv:
    rank: int
    name: str
    env: dict[str, str]


def contract(cluster: Any, master_port: int = MASTER_PORT) -> list[NodeEnv]:
    """torchrun's multi-node environment for each node of ``cluster`` (gcpdl.compute.cluster.Cluster)."""
    from gcpdl.compute.cluster import rank_of

    head = cluster.head
    if rank_of(head) != 0 or not head.internal_ip:
        raise GcpdlError(f"Node 0 of cluster {cluster.name} has no internal address; is it there?",
                         fix=f"Make the cluster whole again with: gcpdl up {cluster.name} --nodes {cluster.size}")
    nnodes = len(cluster.nodes)
    nproc = max(1, head.gpu_count)
    out = []
    for node in cluster.nodes:
        rank = rank_of(node)
        out.append(NodeEnv(rank, node.name, {
            "MASTER_ADDR": head.internal_ip,
            "MASTER_PORT": str(master_port),
            "NNODES": str(nnodes),
            "NODE_RANK": str(rank),
            "NPROC_PER_NODE": str(nproc),
            "WORLD_SIZE": str(nnodes * nproc),
        }))
    return out


def remote_command(env: dict[str, str], command: str) -> str:
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return f"export {exports}; {command}"


class _Lines:
    """Bytes from one node's terminal -> whole lines. A carriage return rewrites the line on a
    terminal (progress bars): only what a terminal would end up showing is kept."""

    def __init__(self, rank: int, emit: Emit):
        self.rank, self.emit, self.buf = rank, emit, b""

    def feed(self, data: bytes) -> None:
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            self._out(line)

    def close(self) -> None:
        if self.buf:
            self._out(self.buf)
            self.buf = b""

    def _out(self, line: bytes) -> None:
        shown = line.rstrip(b"\r").rsplit(b"\r", 1)[-1]
        self.emit(self.rank, shown.decode(errors="replace"))


@dataclass
class Outcome:
    codes: dict[int, int]  # rank -> exit status (255: no status, the connection died)
    first_failed: int | None  # the rank that failed first, in time
    interrupted: bool = False
    stopped: list[int] = field(default_factory=list)  # ranks stopped because another failed

    @property
    def exit_code(self) -> int:
        if self.first_failed is not None:
            return self.codes[self.first_failed]
        return 130 if self.interrupted else 0

    def as_dict(self) -> dict[str, Any]:
        return {"exit_code": self.exit_code, "codes": {str(k): v for k, v in sorted(self.codes.items())},
                "first_failed": self.first_failed, "interrupted": self.interrupted, "stopped": self.stopped}


class GroupRun:
    """One command per session (``sessions[i]`` runs ``commands[i]``), streamed, waited for.

    ``stop_on_failure``: when a node fails, the others get Ctrl-C (a distributed job whose peer
    died would otherwise wait out NCCL's timeout). KeyboardInterrupt in the waiting thread sends
    Ctrl-C to every node, waits ``grace`` seconds, then hangs up the ones still running."""

    def __init__(self, sessions: list[Any], ranks: list[int], commands: list[str], emit: Emit,
                 stop_on_failure: bool = True, grace: float = INTERRUPT_GRACE,
                 notice: Callable[[str], None] | None = None):
        self.sessions, self.ranks, self.commands = sessions, ranks, commands
        self.emit, self.stop_on_failure, self.grace = emit, stop_on_failure, grace
        self.notice = notice or (lambda _m: None)
        self.channels: dict[int, Any] = {}
        self.done: "queue.Queue[tuple[int, int]]" = queue.Queue()
        self.lock = threading.Lock()
        self.asked_to_stop: set[int] = set()

    def _node(self, session: Any, rank: int, command: str) -> None:
        lines = _Lines(rank, self.emit)
        code = 255
        try:
            chan = session.transport.open_session(timeout=30)
            chan.get_pty(term="dumb", width=PTY_WIDTH)
            chan.exec_command(command)
            with self.lock:
                self.channels[rank] = chan
                late = rank in self.asked_to_stop  # stopped before it had started
            if late:
                chan.send(INTERRUPT)
            while True:
                data = chan.recv(65536)
                if not data:
                    break
                lines.feed(data)
            status = chan.recv_exit_status()
            code = 255 if status < 0 else status
        except Exception as e:  # noqa: BLE001 - a dead connection is this node's failure, reported as 255
            lines.close()
            self.emit(rank, f"gcpdl: connection lost ({type(e).__name__}: {str(e)[:100]})")
        finally:
            lines.close()
            self.done.put((rank, code))

    def _interrupt(self, ranks: list[int]) -> None:
        with self.lock:
            self.asked_to_stop.update(ranks)
            chans = [self.channels.get(r) for r in ranks]
        for chan in chans:
            if chan is not None and not chan.closed:
                try:
                    chan.send(INTERRUPT)
                except Exception:  # noqa: BLE001 - already gone
                    pass

    def _hang_up(self, ranks: list[int]) -> None:
        with self.lock:
            chans = [self.channels.get(r) for r in ranks]
        for chan in chans:
            if chan is not None:
                chan.close()

    def run(self) -> Outcome:
        threads = [threading.Thread(target=self._node, args=(s, r, c), daemon=True, name=f"gcpdl-run-{r}")
                   for s, r, c in zip(self.sessions, self.ranks, self.commands)]
        for t in threads:
            t.start()
        codes: dict[int, int] = {}
        first_failed: int | None = None
        interrupted = False
        stopped: list[int] = []
        hang_up_at: float | None = None
        while len(codes) < len(threads):
            try:
                try:
                    rank, code = self.done.get(timeout=POLL)
                except queue.Empty:
                    if hang_up_at is not None and time.monotonic() >= hang_up_at:
                        self._hang_up([r for r in self.ranks if r not in codes])
                        hang_up_at = None
                    continue
                codes[rank] = code
                if code != 0 and first_failed is None and not interrupted and rank not in stopped:
                    first_failed = rank
                    rest = [r for r in self.ranks if r not in codes]
                    if self.stop_on_failure and rest:
                        self.notice(f"Node {rank} failed (exit {code}); stopping the other nodes.")
                        stopped = rest
                        self._interrupt(rest)
                        hang_up_at = time.monotonic() + self.grace
            except KeyboardInterrupt:
                rest = [r for r in self.ranks if r not in codes]
                if interrupted:  # a second Ctrl-C: do not wait any longer
                    self._hang_up(rest)
                    continue
                interrupted = True
                self.notice(f"Interrupting {len(rest)} node(s)...")
                self._interrupt(rest)
                hang_up_at = time.monotonic() + self.grace
        for t in threads:
            t.join(1.0)
        return Outcome(codes, first_failed, interrupted, stopped)


__all__ = ["GroupRun", "MASTER_PORT", "NodeEnv", "Outcome", "contract", "remote_command"]
