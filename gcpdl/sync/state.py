"""The manifest: what is on disk and verified, so a re-run costs a listing plus a stat.

One SQLite file in DEST/.gcpdl/ holds (path, generation, size, crc32c, mtime_ns) per file that
was verified and renamed into place. Keyed by the path relative to DEST, so the same DEST can be
refreshed from a copy of the bucket: size + CRC32C say whether the bytes are the same.

Crash safety (kill -9 at any moment): a row is written only after the rename, and a file
without a row (or with a row whose mtime no longer matches) is re-checked by CRC32C against the
listing before anything is fetched again, so an uncommitted batch costs a read, not a download.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, NamedTuple

from gcpdl.errors import SyncError
from gcpdl.sync.paths import STATE_DIRNAME

if TYPE_CHECKING:  # pragma: no cover
    from gcpdl.deadline import Deadline
    from gcpdl.sync.progress import Progress

SCHEMA_VERSION = 1
FLUSH_ROWS = 2000  # batched commits: one fsync-free WAL commit per batch, not per file
FLUSH_SECONDS = 1.0


class Row(NamedTuple):
    generation: int
    size: int
    crc32c: int | None
    mtime_ns: int


def state_dir(dest: Path) -> Path:
    return dest / STATE_DIRNAME


def _is_full(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)  # Python 3.11+; the VM's may be older
    if code is not None:
        return code & 0xFF == 13  # SQLITE_FULL
    return "disk is full" in str(e)


def _state_error(e: sqlite3.Error, dest: Path, path: Path, opening: bool) -> SyncError:
    """SQLite's own words are no error message: a full disk is the full disk the data path would
    report, anything else names the file and what to do."""
    from gcpdl.sync.destfs import disk_error

    if _is_full(e):
        return disk_error(OSError(errno.ENOSPC, "No space left on device"), str(dest))
    if opening:
        return SyncError(f"Cannot open the sync state {path}: {e}.", fix=f"Remove {path.parent} and re-run.")
    return SyncError(f"Cannot save the sync state {path}: {e}.", fix="Check the disk, then re-run: finished files are kept.")


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    # A crash loses at most the last batch, which the CRC re-check recovers (see module doc).
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


# --- who holds the lock, and what it tells a second sync ------------------------------------
# The lock file names its holder (``pid 1234 started 1795000000.000``); the holder's sync CLI
# publishes its latest progress record (PROGRESS_FILE) and, before it exits, its result
# (RESULT_FILE), so a second sync for the same DEST follows the first one instead of failing.
PROGRESS_FILE = "progress"
RESULT_FILE = "result.json"


@dataclass(frozen=True)
class Holder:
    pid: int
    started: float  # unix seconds

    def describe(self) -> str:
        return f"pid {self.pid}, started {time.strftime('%H:%M:%S', time.gmtime(self.started))} UTC"


class SyncBusy(SyncError):
    """Another sync holds DEST's lock; ``holder`` is None when its lock file does not say who."""

    def __init__(self, dest: Path, holder: Holder | None):
        who = f" ({holder.describe()})" if holder else ""
        super().__init__(f"Another gcpdl sync{who} is already writing to {dest}.", fix="Wait for it to finish.")
        self.dest, self.holder, self.dir = dest, holder, state_dir(dest)


def read_holder(sdir: Path) -> Holder | None:
    try:
        parts = (sdir / "lock").read_text().split()
    except OSError:
        return None
    if len(parts) == 4 and parts[0] == "pid" and parts[2] == "started":
        try:
            return Holder(int(parts[1]), float(parts[3]))
        except ValueError:
            return None
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def publish_progress(sdir: Path | None, p: "Progress") -> None:
    """The holder's latest progress, for a sync that follows it (best effort: a full disk or a
    vanished DEST must not stop the sync itself)."""
    from gcpdl.sync.progress import to_record

    if not _holding(sdir):
        return
    try:
        _write_atomic(sdir / PROGRESS_FILE, to_record(p) + "\n")
    except OSError:
        pass


def _holding(sdir: Path | None) -> bool:
    holder = read_holder(sdir) if sdir is not None else None
    return holder is not None and holder.pid == os.getpid()


def publish_result(sdir: Path | None, exit_code: int, summary: dict[str, Any] | None, error: str | None) -> None:
    """How the holder's sync ended; written only by the process the lock file names."""
    holder = read_holder(sdir) if sdir is not None else None
    if holder is None or holder.pid != os.getpid():
        return
    body = {"pid": holder.pid, "started": holder.started, "exit": exit_code, "summary": summary, "error": error}
    try:
        _write_atomic(sdir / RESULT_FILE, json.dumps(body))
    except OSError:
        pass


def _read_result(sdir: Path, holder: Holder) -> dict[str, Any] | None:
    try:
        body = json.loads((sdir / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict) or (body.get("pid"), body.get("started")) != (holder.pid, holder.started):
        return None  # a previous sync's
    return body


def follow(busy: SyncBusy, on_progress: Callable[["Progress"], None], deadline: "Deadline", every: float) -> dict[str, Any] | None:
    """Relay the holder's progress until it ends; its result ({"exit", "summary", "error"}), or
    None when it ended without one (killed)."""
    from gcpdl.sync.progress import from_record

    assert busy.holder is not None
    holder, last = busy.holder, None
    while True:
        result = _read_result(busy.dir, holder)
        if result is not None:
            return result
        if not _alive(holder.pid):
            return _read_result(busy.dir, holder)
        try:
            text = (busy.dir / PROGRESS_FILE).read_text().strip()
        except OSError:
            text = ""
        if text and text != last:
            last = text
            p = from_record(text)
            if p is not None:
                on_progress(p)
        deadline.pause(every)


class State:
    """Opened once per sync; holds an exclusive lock so two syncs never share a DEST."""

    def __init__(self, dest: Path):
        self.dest = dest
        self.dir = state_dir(dest)
        self.dir.mkdir(exist_ok=True)
        self._lock = open(self.dir / "lock", "a+")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise SyncBusy(dest, read_holder(self.dir)) from None
        self.holder = Holder(os.getpid(), round(time.time(), 3))
        for stale in (PROGRESS_FILE, RESULT_FILE):  # a previous holder's
            try:
                (self.dir / stale).unlink()
            except FileNotFoundError:
                pass
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"pid {self.holder.pid} started {self.holder.started:.3f}\n")
        self._lock.flush()
        self.path = self.dir / "state.sqlite"
        try:
            self._w = _connect(self.path)
            self._w.execute(
                "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, generation INTEGER, size INTEGER,"
                " crc32c INTEGER, mtime_ns INTEGER) WITHOUT ROWID"
            )
            self._w.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self._w.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            # the reader lives in the listing thread; WAL lets it read while we write
            self._r = _connect(self.path)
            self._wmu = threading.Lock()
        except sqlite3.DatabaseError as e:
            self._lock.close()
            raise _state_error(e, dest, self.path, opening=True) from None
        self._mu = threading.Lock()  # the listing thread records re-verified files too
        self._pending: list[tuple] = []
        self._deleted: list[tuple] = []
        self._last_flush = time.monotonic()

    # --- reads (listing thread) --------------------------------------------------------------
    def rows_between(self, first: str, last: str) -> dict[str, Row]:
        """Rows for a listing page: the page is sorted, so one range scan covers it."""
        cur = self._r.execute(
            "SELECT path, generation, size, crc32c, mtime_ns FROM files WHERE path >= ? AND path <= ?", (first, last)
        )
        return {r[0]: Row(r[1], r[2], r[3], r[4]) for r in cur}

    def all_paths(self) -> Iterable[str]:
        for (p,) in self._r.execute("SELECT path FROM files"):
            yield p

    # --- writes (event loop thread) ----------------------------------------------------------
    def record(self, path: str, generation: int, size: int, crc32c: int | None, mtime_ns: int) -> None:
        with self._mu:
            self._pending.append((path, generation, size, crc32c, mtime_ns))
            due = len(self._pending) >= FLUSH_ROWS or time.monotonic() - self._last_flush > FLUSH_SECONDS
        if due:
            self.flush()

    def forget(self, path: str) -> None:
        with self._mu:
            self._deleted.append((path,))

    def flush(self) -> None:
        with self._mu:
            self._last_flush = time.monotonic()
            if not self._pending and not self._deleted:
                return
            pending, deleted = self._pending, self._deleted
            self._pending, self._deleted = [], []
        # One transaction per batch. When it fails (a full disk) it is rolled back whole and its
        # rows are dropped: their files are on disk, verified, and a re-run finds them by CRC32C
        # (see the module doc), so the state never says more than what is there.
        try:
            with self._wmu, self._w:
                self._w.execute("BEGIN")
                if pending:
                    self._w.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)", pending)
                if deleted:
                    self._w.executemany("DELETE FROM files WHERE path = ?", deleted)
        except sqlite3.Error as e:
            raise _state_error(e, self.dest, self.path, opening=False) from None

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._r.close()
            self._w.close()
            self._lock.close()


class ReadOnlyState:
    """For --dry-run: reads the manifest if there is one, creates and locks nothing."""

    def __init__(self, dest: Path):
        path = state_dir(dest) / "state.sqlite"
        self._r = None
        if path.exists():
            try:
                self._r = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
                self._r.execute("SELECT 1 FROM files LIMIT 1").fetchall()
            except sqlite3.DatabaseError:
                self._r = None

    def rows_between(self, first: str, last: str) -> dict[str, Row]:
        if self._r is None:
            return {}
        cur = self._r.execute(
            "SELECT path, generation, size, crc32c, mtime_ns FROM files WHERE path >= ? AND path <= ?", (first, last)
        )
        return {r[0]: Row(r[1], r[2], r[3], r[4]) for r in cur}

    def record(self, *args) -> None:
        pass

    def forget(self, path: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self._r is not None:
            self._r.close()


class SeenNames:
    """Every path the listing named, for --delete. A set would cost ~100 B of RAM per object
    (900 MB for 9 million); this is a private temporary SQLite file instead."""

    def __init__(self) -> None:
        self._conn = sqlite3.connect("", check_same_thread=False)  # "" = a private temp file
        self._conn.execute("PRAGMA journal_mode=OFF")
        self._conn.execute("PRAGMA synchronous=OFF")
        self._conn.execute("CREATE TABLE seen (path TEXT PRIMARY KEY) WITHOUT ROWID")

    def update(self, paths: Iterable[str]) -> None:
        with self._conn:
            self._conn.executemany("INSERT OR IGNORE INTO seen VALUES (?)", ((p,) for p in paths))

    def __contains__(self, path: str) -> bool:
        return self._conn.execute("SELECT 1 FROM seen WHERE path = ?", (path,)).fetchone() is not None

    def close(self) -> None:
        self._conn.close()
