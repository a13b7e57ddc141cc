"""`gcpdl sync gs://B/P --on CLUSTER`: the sync engine on every node at once, one progress line.

Each node runs the same engine as `sync --on VM` (gcpdl.sync.remote: gcpdl's wheel shipped over
SFTP, run there), reading GCS directly: the data never passes through this machine and the
nodes do not wait for each other. Their progress lines are summed into one; anything else a
node says is passed on with its name. Nothing here prints.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any, Callable

# what the engine prints on a non-terminal stderr (gcpdl/cli/sync.py _Reporter), e.g.
# "12/100+ files, 1.2 MB/3.4 MB, 5 files/s, 1.0 MB/s, ETA 3s (0 up to date)"
_PROGRESS = re.compile(
    r"^(?P<done>\d+)/(?P<total>\d+)(?P<more>\+?) files, (?P<b>[\d.]+) (?P<bu>MB|GB)/(?P<bt>[\d.]+) (?P<btu>MB|GB),"
    r" (?P<fps>[\d.]+) files/s, (?P<mbps>[\d.]+) MB/s"
)
_UNIT = {"MB": 1e6, "GB": 1e9}


@dataclass
class NodeProgress:
    files_done: int = 0
    files_total: int = 0
    listing_done: bool = False
    bytes_done: float = 0.0
    bytes_total: float = 0.0
    mb_per_s: float = 0.0
    finished: bool = False


def parse_progress(line: str) -> NodeProgress | None:
    m = _PROGRESS.match(line)
    if not m:
        return None
    return NodeProgress(int(m["done"]), int(m["total"]), not m["more"], float(m["b"]) * _UNIT[m["bu"]],
                        float(m["bt"]) * _UNIT[m["btu"]], float(m["mbps"]))


class Combined:
    """The nodes' progress, summed: ``line()`` is what the user sees."""

    def __init__(self, names: list[str]):
        self.names = names
        self.nodes = {n: NodeProgress() for n in names}
        self.lock = threading.Lock()

    def update(self, name: str, p: NodeProgress) -> None:
        with self.lock:
            self.nodes[name] = p

    def finish(self, name: str, summary: dict[str, Any] | None) -> None:
        with self.lock:
            p = self.nodes[name]
            p.finished, p.listing_done = True, True
            if summary:
                files = int(summary.get("files", 0)) + int(summary.get("skipped", 0))
                p.files_done = p.files_total = files
                p.bytes_done = p.bytes_total = max(p.bytes_total, float(summary.get("bytes", 0)))
            p.mb_per_s = 0.0

    def line(self) -> str:
        with self.lock:
            ps = list(self.nodes.values())
        done = sum(p.files_done for p in ps)
        total = sum(p.files_total for p in ps)
        listing = all(p.listing_done for p in ps)
        mb = sum(p.bytes_done for p in ps) / 1e6
        mb_total = sum(p.bytes_total for p in ps) / 1e6
        rate = sum(p.mb_per_s for p in ps)
        finished = sum(p.finished for p in ps)
        return (f"{len(ps)} nodes ({finished} done): {done}/{total}{'' if listing else '+'} files, "
                f"{mb:.1f}/{mb_total:.1f} MB, {rate:.1f} MB/s together")


@dataclass
class NodeResult:
    name: str
    exit_code: int
    summary: dict[str, Any] | None
    error: str | None


def sync_nodes(sessions: list[Any], names: list[str], args: list[str], env: dict[str, str],
               on_line: Callable[[str], None], on_note: Callable[[str, str], None],
               python: str | None = None) -> list[NodeResult]:
    """Run `gcpdl sync ARGS` on every session at once. ``on_line(combined)`` gets the combined
    progress line whenever a node reports; ``on_note(node, line)`` everything else a node says."""
    from gcpdl.sync import remote

    combined = Combined(names)
    results: list[NodeResult | None] = [None] * len(sessions)

    def one(i: int) -> None:
        name = names[i]

        def report(line: str) -> None:
            p = parse_progress(line)
            if p is None:
                on_note(name, line)
                return
            combined.update(name, p)
            on_line(combined.line())

        try:
            r = remote.run_remote(sessions[i], args, env, report, python=python)
            results[i] = NodeResult(name, r.exit_code, r.summary, r.error)
        except Exception as e:  # noqa: BLE001 - this node's failure, reported with the others
            results[i] = NodeResult(name, 1, None, getattr(e, "message", None) or f"{type(e).__name__}: {e}")
        combined.finish(name, results[i].summary if results[i] else None)
        on_line(combined.line())

    threads = [threading.Thread(target=one, args=(i,), daemon=True, name=f"gcpdl-sync-{names[i]}") for i in range(len(sessions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in results if r is not None]


__all__ = ["Combined", "NodeResult", "parse_progress", "sync_nodes"]
