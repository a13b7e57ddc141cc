"""Orchestration: listing thread -> plan -> pooled transfers -> state -> summary.

The listing (rawlist: raw HTTP/JSON, like the data path) runs in a thread and hands the event
loop one batch per page, already planned: filtered, mapped to safe paths and checked against the
state and a stat, so the loop only sees objects to fetch. Downloads start with the first page,
at any dataset size; at most PLAN_AHEAD objects wait in memory. The free-space check runs on the
listed total as it grows (before each batch is started), so a DEST that cannot hold the job
stops the run cleanly (finished files kept whole, no part file left) as soon as the listing shows
it; when the listing fits in one page, that is before the first byte is fetched.
"""

from __future__ import annotations

import asyncio
import itertools
import queue as stdqueue
import os
import shutil
import stat as statmod
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gcpdl.errors import CredentialsError, InvalidInput, SyncError
from gcpdl.sync import listing as listing_mod
from gcpdl.sync.destfs import Blocked, Dest, DirFds, blocked_reason, disk_error
from gcpdl.sync.paths import STATE_DIRNAME, Filters, Unsafe, relative_path
from gcpdl.sync.progress import Failure, InTheWay, Progress, SyncSummary
from gcpdl.sync.rawlist import RawLister
from gcpdl.sync.state import ReadOnlyState, SeenNames, State
from gcpdl.sync.url import GcsUrl
from gcpdl.sync.verify import fd_crc32c, require_c_crc32c

DEFAULT_JOBS = 64
PAGES_AHEAD = 4  # listing pages fetched ahead of the planner
PLAN_AHEAD = 50_000  # objects planned but not yet started; bounds memory (~150 B each)
DEFAULT_STORAGE_ENDPOINT = "https://storage.googleapis.com"
RECENT_FILES = 20_000  # file names remembered for file-vs-folder collision checks
MAX_WARNINGS = 20  # per kind; the rest are counted in the summary
MAX_RECORDED = 100  # objects named in the summary's lists (failures, blocked)

ProgressFn = Callable[[Progress], None]
WarnFn = Callable[[str], None]


@dataclass
class SyncOptions:
    source: GcsUrl
    dest: Path
    jobs: int = DEFAULT_JOBS
    delete: bool = False
    dry_run: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    billing_project: str | None = None
    anonymous: bool = False
    slice_size: int = 16 << 20
    retry_base: float = 0.25
    progress_interval: float = 0.5
    # seconds before each piece of a streamed or sliced download is written (a busy disk; tests)
    write_delay: float = 0.0
    # no answer from the storage endpoint for this long, every attempt failing: stop (transfer.BREAKER_S)
    breaker_s: float = 30.0
    # the data path's clocks and pauses, injectable so tests measure no time
    clock: Callable[[], float] = field(default=time.monotonic)
    wall_clock: Callable[[], float] = field(default=time.time)
    sleep: Callable[[float], Any] = field(default=asyncio.sleep)
    # free bytes on DEST's filesystem; injectable so a test can stage a full disk
    disk_free: Callable[[str], int] = field(default=lambda path: shutil.disk_usage(path).free)


def _crc_or_none(dir_fd: int, name: str) -> int | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:  # unreadable: fetching it again will say what is wrong
        return None
    try:
        return fd_crc32c(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def _identity(creds: Any) -> str:
    if creds is None:
        return "anonymous"
    email = getattr(creds, "service_account_email", None)
    if email == "default":  # GCE metadata credentials before their first refresh
        return "the VM's service account"
    if email:
        return email
    return getattr(creds, "account", None) or "your Google account (see: gcloud auth list)"


def _data_endpoint(factory: Any) -> str:
    return factory.storage_endpoint or DEFAULT_STORAGE_ENDPOINT


def _list_endpoint(factory: Any) -> str:
    """Where objects.list goes: the data path's endpoint, unless the factory names another
    (``storage_list_endpoint``: a test's dead data endpoint behind a working listing)."""
    return getattr(factory, "storage_list_endpoint", None) or _data_endpoint(factory)


def _credentials(factory: Any, anonymous: bool, warn: WarnFn) -> Any | None:
    """None means anonymous: asked for, an emulator, or no credentials at all (public buckets)."""
    if anonymous:
        return None
    if getattr(factory, "storage_is_emulator", False) and getattr(factory, "_credentials", None) is None:
        return None  # like the library under STORAGE_EMULATOR_HOST, unless a caller injected some
    try:
        return factory.credentials()
    except CredentialsError:
        warn("No Google credentials found; trying anonymous access (works for public buckets).")
        return None


class _Run:
    """State shared by the listing thread and the event loop for one sync."""

    def __init__(self, opts: SyncOptions, on_progress: ProgressFn | None, on_warning: WarnFn | None):
        self.opts = opts
        self.dest = str(opts.dest)
        self.filters = Filters(opts.include, opts.exclude)
        self.on_progress = on_progress
        self._warn = on_warning or (lambda m: None)
        self.summary = SyncSummary(source=str(opts.source), dest=self.dest, dry_run=opts.dry_run)
        self.warn_counts: dict[str, int] = {}
        self.started = time.monotonic()
        # written by the listing thread
        self.planned_files = 0
        self.planned_bytes = 0
        self.listing_done = False
        self.seen: SeenNames | None = SeenNames() if opts.delete else None
        self._recent: set[str] = set()
        self._recent_order: deque[str] = deque()
        self.walker: DirFds | None = None  # the planner's own folder descriptors (None: no DEST yet)
        # written by the loop
        self.bytes_live = 0
        self.abort = threading.Event()

    def blocked(self, name: str, path: str, reason: str) -> None:
        """Something is where the object must go: counted, named in the summary, warned about."""
        s = self.summary
        s.collisions += 1
        if len(s.blocked) < MAX_RECORDED:
            s.blocked.append(InTheWay(name, path, reason))
        self.warn("collision", f"Skipping {name!r}: {path!r} in DEST {reason}.")

    def warn(self, kind: str, message: str) -> None:
        n = self.warn_counts.get(kind, 0) + 1
        self.warn_counts[kind] = n
        if n <= MAX_WARNINGS:
            self._warn(message)
        elif n == MAX_WARNINGS + 1:
            self._warn(f"(more {kind} warnings are counted in the summary, not shown)")

    def progress(self) -> Progress:
        s = self.summary
        return Progress(
            files_done=s.files,
            files_total=self.planned_files,
            bytes_done=min(self.bytes_live, self.planned_bytes),
            bytes_total=self.planned_bytes,
            skipped=s.skipped,
            failed=s.failed,
            listed=s.listed,
            listing_done=self.listing_done,
            elapsed=time.monotonic() - self.started,
        )

    # --- planning (listing thread) -----------------------------------------------------------
    # The listing is sorted, so an object `a` comes shortly before `a/b` (only names like `a-x`
    # or `a.txt` sort between them). Remembering the most recent file names lets the planner
    # report the collision deterministically (the file wins) instead of racing two downloads.
    def _remember_file(self, rel: str) -> None:
        self._recent_order.append(rel)
        self._recent.add(rel)
        if len(self._recent_order) > RECENT_FILES:
            self._recent.discard(self._recent_order.popleft())

    def _file_in_the_way(self, rel: str) -> str | None:
        if not self._recent:
            return None
        parts = rel.split("/")
        path = parts[0]
        for i in range(1, len(parts)):
            if path in self._recent:
                return path
            path = f"{path}/{parts[i]}"
        return None

    def plan_page(self, page: list, state: Any) -> list:
        s = self.summary
        s.listed += len(page)
        keep = []
        prefix = self.opts.source.prefix
        for rec in page:
            rel = relative_path(rec.name, prefix)
            if rel is None:
                s.placeholders += 1
                continue
            if isinstance(rel, Unsafe):
                # --exclude is the way out for names gcpdl will never write
                if self.filters and not self.filters.keep(rec.name[len(prefix):] if rec.name.startswith(prefix) else rec.name):
                    s.filtered += 1
                    continue
                s.unsafe += 1
                self.warn("unsafe-name", f"Skipping object {rel.name!r}: its name {rel.reason}.")
                continue
            if self.filters and not self.filters.keep(rel):
                s.filtered += 1
                continue
            if "/" in rel:
                blocker = self._file_in_the_way(rel)
                if blocker is not None:
                    s.collisions += 1
                    if len(s.blocked) < MAX_RECORDED:
                        s.blocked.append(InTheWay(rec.name, blocker, "is a file in the bucket too"))
                    self.warn("collision", f"Skipping {rec.name!r}: a file is in the way of its folder (file {blocker!r}).")
                    continue
            self._remember_file(rel)
            keep.append((rec, rel))
        if not keep:
            return []
        if self.seen is not None:
            self.seen.update(rel for _, rel in keep)
        rows = state.rows_between(keep[0][1], keep[-1][1])
        walker = self.walker
        fetch = []
        for rec, rel in keep:
            # What is at the object's path now, looked up without following any link: a folder
            # (or a file, or a link) in the way is reported here, before a byte is fetched.
            st = None
            parent = None
            parent_rel, _, base = rel.rpartition("/")
            if walker is not None:
                try:
                    parent = walker.get(parent_rel, create=False)
                    if parent is not None:
                        st = os.stat(base, dir_fd=parent, follow_symlinks=False)
                except Blocked as b:
                    self.blocked(rec.name, b.path, b.reason)
                    continue
                except OSError:  # missing or unreadable: the fetch decides
                    st = None
            if st is not None and statmod.S_ISDIR(st.st_mode):
                self.blocked(rec.name, rel, blocked_reason("folder", folder_wanted=False))
                continue
            if st is not None and statmod.S_ISREG(st.st_mode) and st.st_size == rec.size:
                row = rows.get(rel)
                if (
                    row is not None
                    and row.size == rec.size
                    and row.mtime_ns == st.st_mtime_ns
                    and (row.crc32c == rec.crc32c if rec.crc32c is not None else row.generation == rec.generation)
                ):
                    s.skipped += 1
                    continue
                # No row (a crash before the batch was committed, or a DEST filled another way):
                # the bytes decide, and reading them is cheaper than fetching them again.
                if rec.crc32c is not None and _crc_or_none(parent, base) == rec.crc32c:
                    state.record(rel, rec.generation, rec.size, rec.crc32c, st.st_mtime_ns)
                    s.skipped += 1
                    continue
            fetch.append((rec, rel))
        self.planned_files += len(fetch)
        self.planned_bytes += sum(r.size for r, _ in fetch)
        return fetch


def run_sync(
    opts: SyncOptions,
    factory: Any,
    on_progress: ProgressFn | None = None,
    on_warning: WarnFn | None = None,
) -> SyncSummary:
    """Sync ``opts.source`` into ``opts.dest``; raises GcpdlError subclasses for whole-run errors.

    Objects that fail individually are listed in the summary's ``failures``.
    """
    require_c_crc32c()
    if opts.jobs < 1 or opts.jobs > 4096:
        raise InvalidInput(f"--jobs must be between 1 and 4096 (got {opts.jobs}).")
    dest = opts.dest
    # a DEST that is a file may be the file a single-object URL names (decided by the listing)
    if dest.exists() and not dest.is_dir() and dest.name != opts.source.leaf:
        raise InvalidInput(f"DEST {dest} exists and is not a folder.")
    run = _Run(opts, on_progress, on_warning)
    creds = _credentials(factory, opts.anonymous, on_warning or (lambda m: None))
    identity = _identity(creds)
    def pages_for(prefix: str):
        return RawLister(_list_endpoint(factory), opts.source.bucket, prefix, creds, opts.billing_project, identity).pages()

    # The first page before touching DEST: a missing bucket, a denied read or a URL that matches
    # nothing leaves nothing behind. A URL naming one object lands in DEST (listing.object_dest).
    # google-cloud-storage is imported only to explain a URL that matches nothing.
    source, pages = listing_mod.open_listing(
        pages_for, lambda: factory.storage(project=opts.billing_project, anonymous=creds is None),
        opts.source, opts.billing_project,
    )
    if source.object is not None:
        opts.source, opts.dest = source, listing_mod.object_dest(source, dest, opts.delete)
        dest, run = opts.dest, _Run(opts, on_progress, on_warning)
    if dest.exists() and not dest.is_dir():
        raise InvalidInput(f"DEST {dest} exists and is not a folder.")
    first = next(pages, [])

    created_dest = False
    had_state = True
    state: Any = None
    fs: Dest | None = None
    ok = False
    try:
        try:
            if opts.dry_run:
                state = ReadOnlyState(dest)
                fs = Dest(str(dest)) if dest.is_dir() else None
            else:
                created_dest = not dest.exists()
                had_state = os.path.lexists(dest / STATE_DIRNAME)
                dest.mkdir(parents=True, exist_ok=True)
                fs = Dest(str(dest))
                fs.open_state()  # refuses a link at .gcpdl, parts or a state file
                state = State(dest)  # the lock: only then are a killed run's parts ours to remove
                fs.clear_parts()
        except OSError as e:
            raise disk_error(e, str(dest)) from None
        if fs is not None:
            run.walker = DirFds(os.dup(fs.root))
        asyncio.run(_main(run, state, creds, identity, factory, first, pages, fs))
        ok = True
    finally:
        run.abort.set()
        late = _finish(run, fs, state, dest, created_dest, had_state, ok)
    if late is not None:  # the run went well but its state could not be saved (a full disk)
        raise late
    s = run.summary
    s.seconds = round(time.monotonic() - run.started, 3)
    if opts.dry_run:
        s.files, s.bytes = run.planned_files, run.planned_bytes
    elapsed = max(s.seconds, 1e-9)
    s.files_per_s = round(s.files / elapsed, 1)
    s.mb_per_s = round(s.bytes / 1e6 / elapsed, 2)
    s.finish()
    return s


def _finish(run: _Run, fs: Dest | None, state: Any, dest: Path, created_dest: bool, had_state: bool, ok: bool) -> Exception | None:
    """Every clean-up step runs whatever the others do (part files first: they hold the space a
    full disk needs back). Returns the first error, which the caller raises only when the run
    itself went well: a failed run's own error is the one worth showing."""
    first: Exception | None = None

    def attempt(step: Callable[[], Any]) -> None:
        nonlocal first
        try:
            step()
        except Exception as e:
            first = first or e

    if fs is not None and not run.opts.dry_run:
        attempt(fs.clear_parts)
    if state is not None:
        attempt(state.close)
    if run.seen is not None:
        attempt(run.seen.close)
    if run.walker is not None:
        attempt(run.walker.close)
    if fs is not None:
        attempt(fs.close)
    if not run.opts.dry_run and not ok and run.summary.files == 0:
        if created_dest:  # nothing was fetched into a DEST we created: leave no trace
            shutil.rmtree(dest, ignore_errors=True)
        elif not had_state:
            shutil.rmtree(dest / STATE_DIRNAME, ignore_errors=True)
    return first


async def _main(run: _Run, state: Any, creds: Any, identity: str, factory: Any, first: list, pages, fs: Dest | None) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    slots = threading.Semaphore(max(2, PLAN_AHEAD // listing_mod.PAGE_SIZE))

    # Pages come one after another (each needs the previous nextPageToken), so the next page is
    # fetched in its own thread while this one is planned: a re-sync costs max(listing, planning)
    # rather than their sum.
    raw: stdqueue.Queue = stdqueue.Queue(maxsize=PAGES_AHEAD)

    def put_raw(item) -> bool:
        while not run.abort.is_set():
            try:
                raw.put(item, timeout=0.2)
                return True
            except stdqueue.Full:
                continue
        return False

    def fetch_pages() -> None:
        try:
            for page in pages:
                if not put_raw(("page", page)):
                    return
            put_raw(("end", None))
        except BaseException as e:
            put_raw(("error", e))

    def planned_pages():
        yield first
        while True:
            try:
                kind, value = raw.get(timeout=0.2)
            except stdqueue.Empty:
                if run.abort.is_set():
                    return
                continue
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value

    def post(fn, *args) -> None:
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop has finished (an abort): nobody is listening
            pass

    def lister() -> None:
        try:
            for page in planned_pages():
                if run.abort.is_set():
                    return
                batch = run.plan_page(page, state)
                if batch:
                    # every slot taken: PLAN_AHEAD objects wait; downloads free the slots
                    while not slots.acquire(timeout=0.2):
                        if run.abort.is_set():
                            return
                    post(queue.put_nowait, ("batch", batch))
            run.listing_done = True
            post(queue.put_nowait, ("done", None))
        except BaseException as e:  # handed to the loop, which raises it
            run.listing_done = True
            post(queue.put_nowait, ("error", e))

    threading.Thread(target=fetch_pages, name="gcpdl-sync-pages", daemon=True).start()
    thread = threading.Thread(target=lister, name="gcpdl-sync-plan", daemon=True)
    thread.start()
    ticker = asyncio.ensure_future(_tick(run))
    try:
        if run.opts.dry_run:
            await _drain(queue, slots)
        else:
            await _transfer(run, state, creds, identity, factory, queue, slots, fs)
        if run.opts.delete and not run.summary.failures and fs is not None:
            _delete_extraneous(run, state, fs)
    finally:
        run.abort.set()
        ticker.cancel()
        if run.on_progress:
            run.on_progress(run.progress())
        await loop.run_in_executor(None, thread.join, 5.0)


async def _tick(run: _Run) -> None:
    if run.on_progress is None:
        return
    while True:
        await asyncio.sleep(run.opts.progress_interval)
        run.on_progress(run.progress())


async def _drain(queue: asyncio.Queue, slots: threading.Semaphore) -> None:
    while True:
        kind, value = await queue.get()
        if kind == "error":
            raise value
        if kind == "done":
            return
        slots.release()


def _check_space(run: _Run) -> None:
    need = run.planned_bytes - run.bytes_live
    if need <= 0:
        return
    free = run.opts.disk_free(run.dest)
    if need > free:
        raise SyncError(
            f"Not enough space on {run.dest}: {_human(need)} to fetch, {_human(free)} free.",
            fix="Free some space, pick a bigger disk, or narrow the sync with --include/--exclude.",
        )


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


async def _transfer(run, state, creds, identity, factory, queue, slots, fs: Dest) -> None:
    from gcpdl.sync.ramp import RateLimiter, Window
    from gcpdl.sync.transfer import Auth, Fetcher, Gone, ObjectFailed

    opts = run.opts
    s = run.summary

    def on_bytes(n: int) -> None:
        run.bytes_live += n

    fetcher = Fetcher(
        _data_endpoint(factory),
        opts.source.bucket,
        Auth(creds),
        Window(opts.jobs),
        RateLimiter(),
        fs,
        user_project=opts.billing_project,
        slice_size=opts.slice_size,
        retry_base=opts.retry_base,
        on_bytes=on_bytes,
        identity=identity,
        write_delay=opts.write_delay,
        breaker_s=opts.breaker_s,
        clock=opts.clock,
        wall_clock=opts.wall_clock,
        sleep=opts.sleep,
    )
    items: deque = deque()
    done = False
    counter = itertools.count()

    # Workers start before the first batch is planned, so all of them would wait on the queue
    # and each batch would wake only one: one worker at a time waits there, the rest wait for
    # it (the lock) and then share what it brought.
    getting = asyncio.Lock()

    async def next_item():
        nonlocal done
        while not items:
            if done:
                return None
            async with getting:
                if items or done:
                    continue
                kind, value = await queue.get()
                if kind == "error":
                    raise value
                if kind == "done":
                    done = True
                    return None
                slots.release()
                items.extend(value)
                _check_space(run)
        return items.popleft()

    async def handle(rec, rel: str) -> None:
        try:  # the folder now, so a file or link put in its way since planning costs no download
            fs.dirs.get(rel.rpartition("/")[0], create=True)
        except Blocked as b:
            run.blocked(rec.name, b.path, b.reason)
            return
        except OSError as e:
            raise disk_error(e, run.dest) from None
        part = f"{next(counter)}.part"
        try:
            got = await fetcher.fetch(rec.name, rec.generation, rec.size, rec.crc32c, rec.md5, part, rel)
        except Blocked as b:
            run.blocked(rec.name, b.path, b.reason)
        except Gone:
            s.gone += 1
            run.warn("gone", f"Skipping {rec.name!r}: it changed or was deleted in the bucket during the sync; re-run to fetch it.")
        except ObjectFailed as e:
            s.failures.append(Failure(rec.name, str(e)))
            s.failed = len(s.failures)
            fs.unlink_part(part)
        else:
            state.record(rel, rec.generation, rec.size, got.crc32c, got.mtime_ns)
            s.files += 1
            s.bytes += rec.size

    async def worker() -> None:
        while True:
            item = await next_item()
            if item is None:
                return
            await handle(*item)

    # (not asyncio.TaskGroup: gcpdl runs on the VM's Python, which may be 3.10)
    tasks = [asyncio.ensure_future(worker()) for _ in range(opts.jobs)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            e = t.exception()
            if isinstance(e, OSError):
                raise disk_error(e, run.dest) from None
            if e is not None:
                raise e
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        s.requests, s.retries = fetcher.requests, fetcher.retries
        fetcher.close()


def _delete_extraneous(run: _Run, state: Any, fs: Dest) -> None:
    """--delete: remove files under DEST that the listing did not name. Never the state dir,
    never anything the filters exclude, never outside DEST: the walk and every unlink and rmdir
    go through folder descriptors (os.fwalk), so a link is removed, never followed."""
    seen = run.seen
    if seen is None:
        return
    touched: set[str] = set()
    for root, dirs, files, root_fd in os.fwalk(".", dir_fd=fs.root):
        rel_root = os.path.normpath(root)
        if rel_root == "." and STATE_DIRNAME in dirs:
            dirs.remove(STATE_DIRNAME)
        for fname in files:  # links to folders are listed here too (not followed)
            rel = fname if rel_root == "." else f"{rel_root}/{fname}"
            if rel in seen or (run.filters and not run.filters.keep(rel)):
                continue
            if run.opts.dry_run:
                run.summary.would_delete.append(rel)
                run.summary.deleted += 1
                continue
            os.unlink(fname, dir_fd=root_fd)
            state.forget(rel)
            run.summary.deleted += 1
            touched.add(rel_root)
    for d in sorted(touched, key=len, reverse=True):  # folders the deletions emptied
        while d != ".":
            parent, _, name = d.rpartition("/")
            try:
                parent_fd = fs.dirs.get(parent, create=False)
                if parent_fd is None:
                    break
                os.rmdir(name, dir_fd=parent_fd)
            except (OSError, Blocked):
                break
            fs.dirs.forget(d)
            d = parent or "."
