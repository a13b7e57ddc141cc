"""The data path: raw HTTP/1.1 GETs on pooled keep-alive connections, in asyncio.

Why not the library: `blob.download_to_filename` costs 3-7 ms of CPU per object (request
building, requests/urllib3 layers, checksum helpers in Python); a GET written straight onto an
asyncio stream costs a fraction of a millisecond, so one core can keep thousands of small objects
per second moving. The endpoint and the bearer token are the ones the library would use.

An object is fetched whole (small ones read in one piece and verified in memory) or, above the
slice threshold, as parallel ranged slices written with os.pwrite into a preallocated part file;
each slice has its own CRC32C and the slice CRCs are combined (verify.combine_slices).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import os
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote, urlsplit

import google_crc32c

from gcpdl.errors import PermissionDenied, SyncError
from gcpdl.sync.destfs import Blocked, Dest, disk_error
from gcpdl.sync.ramp import RateLimiter, Window
from gcpdl.sync.verify import combine_slices, fd_crc32c, fd_md5

RETRY_STATUSES = {408, 429, 500, 502, 503, 504}
THROTTLE_STATUSES = {429, 503}
MAX_ATTEMPTS = 6
STREAM_CHUNK = 1 << 20  # above this, bodies stream to disk instead of being read in one piece
READ_LIMIT = 1 << 18  # asyncio stream buffer (pauses reading at 2x): bounds memory per connection
REQUEST_TIMEOUT = 60.0  # no byte for this long on one request: give up on that attempt
DEFAULT_SLICE_SIZE = 16 << 20
DEFAULT_RETRY_BASE = 0.25  # seconds; backoff is base * 2^attempt with full jitter, capped
# A server that closes the connection after every response (HTTP/1.0, e.g. gcp-storage-emulator)
# makes every request a new TCP handshake; many at once overflow a small accept backlog and
# stall on SYN retransmits (1 s each). Against such a server, keep few requests in flight.
NO_KEEPALIVE_WINDOW = 4
# Page-cache copies of large downloads run on these threads beside the event loop (os.pwrite
# releases the GIL; copying is ~0.65 GB/s per core on a VM, the main cost of a large object).
# 0 = inline. GCPDL_SYNC_IO_THREADS overrides.
IO_THREADS = max(2, min(8, os.cpu_count() or 2))
# Circuit breaker: when the endpoint has answered nothing for BREAKER_S while at least
# BREAKER_FAILURES attempts in a row failed to connect or read, it is down: stop the whole sync
# with one error instead of giving each object left its MAX_ATTEMPTS (113 s for 1,800 objects,
# ~17 h for a million). Bounded by max(BREAKER_S, REQUEST_TIMEOUT) after the last answer.
BREAKER_S = 30.0
BREAKER_FAILURES = 8
RETRY_AFTER_MAX = 60.0  # the longest Retry-After we wait on one retry (seconds)


class _Timeout:
    """asyncio.timeout (3.11+) for Python 3.10 too: the VM's Python may be older than ours.
    ``reschedule(when)`` takes an absolute loop time, like asyncio's."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.fired = False

    async def __aenter__(self) -> "_Timeout":
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.handle = self.loop.call_later(self.seconds, self._fire)
        return self

    def _fire(self) -> None:
        self.fired = True
        self.task.cancel()

    def reschedule(self, when: float) -> None:
        self.handle.cancel()
        self.handle = self.loop.call_at(when, self._fire)

    async def __aexit__(self, et, e, tb) -> bool:
        self.handle.cancel()
        if self.fired and et is asyncio.CancelledError:
            raise TimeoutError
        return False


class Retryable(Exception):
    def __init__(self, reason: str, throttled: bool = False, retry_after: float | None = None):
        super().__init__(reason)
        self.throttled = throttled
        self.retry_after = retry_after  # seconds the server asked us to wait (Retry-After)


class EndpointDown(SyncError):
    """Every connection to the storage endpoint has failed for BREAKER_S: the run stops."""


def retry_after_seconds(value: str, now: float) -> float | None:
    """Retry-After as seconds from ``now`` (wall clock): delay-seconds or an HTTP-date
    (RFC 9110 10.2.3). None when unreadable; never negative."""
    v = value.strip()
    if v.isdigit():
        return float(v)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT
        from datetime import timezone

        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - now)


class Gone(Exception):
    """The generation listed no longer exists (deleted or overwritten mid-sync)."""


class ObjectFailed(Exception):
    pass


@dataclass
class Endpoint:
    scheme: str
    host: str
    port: int
    base: str  # path prefix, usually ""

    @classmethod
    def parse(cls, url: str) -> "Endpoint":
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise SyncError(f"Storage endpoint '{url}' is not an http(s) URL.")
        port = u.port or (443 if u.scheme == "https" else 80)
        return cls(u.scheme, u.hostname, port, u.path.rstrip("/"))

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


class Auth:
    """Bearer token from google-auth credentials (None: anonymous). Refreshed off the loop."""

    def __init__(self, credentials: Any | None):
        self.credentials = credentials
        self._header = b""
        self._checked = 0.0
        self._lock = asyncio.Lock()

    async def header(self, force: bool = False) -> bytes:
        if self.credentials is None:
            return b""
        now = time.monotonic()
        if not force and self._header and now - self._checked < 10.0:
            return self._header
        async with self._lock:
            if force or not self.credentials.valid:
                await asyncio.get_running_loop().run_in_executor(None, self._refresh)
            self._checked = time.monotonic()
            self._header = f"Authorization: Bearer {self.credentials.token}\r\n".encode()
        return self._header

    def _refresh(self) -> None:
        bearer_token(self.credentials, force=True)


def bearer_token(credentials: Any | None, force: bool = False) -> str | None:
    """The credentials' access token, refreshed when expired or ``force``d (None: anonymous).
    Shared by the data path and the raw listing (rawlist), so both send the same token."""
    if credentials is None:
        return None
    if force or not credentials.valid:
        from google.auth.transport.requests import Request

        try:
            credentials.refresh(Request())
        except Exception as e:  # google.auth.exceptions.RefreshError and transport errors
            raise SyncError(f"Cannot refresh Google credentials: {str(e).splitlines()[0][:200]}") from None
    return credentials.token


def _tls_context():
    import ssl  # (http.client imports it anyway; the data path alone does not need it)

    return ssl.create_default_context()


class Pool:
    """Idle keep-alive connections to one endpoint."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.ssl = _tls_context() if endpoint.scheme == "https" else None
        self.opened = 0

    async def get(self):
        while self.idle:
            r, w = self.idle.pop()
            if not w.is_closing() and not r.at_eof():
                return r, w
            w.close()
        self.opened += 1
        return await asyncio.open_connection(self.endpoint.host, self.endpoint.port, ssl=self.ssl, limit=READ_LIMIT)

    def put(self, conn) -> None:
        self.idle.append(conn)

    def close(self) -> None:
        for _, w in self.idle:
            w.close()
        self.idle.clear()


@dataclass
class Head:
    status: int
    length: int | None
    chunked: bool
    keep_alive: bool
    retry_after: str | None = None


async def read_head(reader: asyncio.StreamReader) -> Head:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise Retryable(f"bad status line {lines[0][:60]!r}")
    status = int(parts[1])
    http10 = parts[0] == b"HTTP/1.0"
    length = None
    chunked = False
    conn_hdr = b""
    retry_after = None
    for line in lines[1:]:
        if not line:
            continue
        k, _, v = line.partition(b":")
        k = k.strip().lower()
        if k == b"content-length":
            length = int(v)
        elif k == b"transfer-encoding":
            chunked = b"chunked" in v.lower()
        elif k == b"connection":
            conn_hdr = v.strip().lower()
        elif k == b"retry-after":
            retry_after = v.strip().decode("latin-1")
    keep = (conn_hdr == b"keep-alive") if http10 else (conn_hdr != b"close")
    if length is None and not chunked:
        keep = False  # body runs to EOF
    return Head(status, length, chunked, keep, retry_after)


async def read_body(reader: asyncio.StreamReader, head: Head) -> bytes:
    if head.chunked:
        out = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            n = int(size_line.split(b";")[0].strip(), 16)
            if n == 0:
                await reader.readuntil(b"\r\n")  # trailers are not used by GCS
                return bytes(out)
            out += await reader.readexactly(n)
            await reader.readexactly(2)
    if head.length is not None:
        return await reader.readexactly(head.length) if head.length else b""
    return await reader.read()


async def iter_body(reader: asyncio.StreamReader, head: Head):
    """Yield body pieces as they arrive (for streamed and sliced downloads)."""
    if head.chunked:
        yield await read_body(reader, head)  # GCS does not chunk media; keep this simple
        return
    if head.length is None:
        while True:
            piece = await reader.read(STREAM_CHUNK)
            if not piece:
                return
            yield piece
    left = head.length
    while left > 0:
        piece = await reader.read(min(left, STREAM_CHUNK))
        if not piece:
            raise asyncio.IncompleteReadError(b"", left)
        left -= len(piece)
        yield piece


@dataclass
class Fetched:
    mtime_ns: int
    crc32c: int


class Fetcher:
    """Fetches objects of one bucket into part files and renames them into place."""

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        auth: Auth,
        window: Window,
        limiter: RateLimiter,
        fs: Dest,
        user_project: str | None = None,
        slice_size: int = DEFAULT_SLICE_SIZE,
        retry_base: float = DEFAULT_RETRY_BASE,
        on_bytes: Callable[[int], None] | None = None,
        identity: str = "",
        write_delay: float = 0.0,
        breaker_s: float = BREAKER_S,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ):
        self.endpoint = Endpoint.parse(endpoint)
        self.pool = Pool(self.endpoint)
        self.bucket = bucket
        self.auth = auth
        self.window = window
        self.limiter = limiter
        self.fs = fs
        self.dest = fs.path
        self.slice_size = max(1 << 20, slice_size)
        self.retry_base = retry_base
        self.on_bytes = on_bytes or (lambda n: None)
        self.identity = identity
        self.write_delay = write_delay  # seconds before each piece is written: a slow disk, for tests
        self.breaker_s = breaker_s
        self.clock = clock  # the breaker's
        self.wall_clock = wall_clock  # for Retry-After dates
        self.sleep = sleep  # every pause between attempts goes through it
        self._last_answer = clock()
        self._failing = 0  # attempts in a row that got no answer
        self.down: EndpointDown | None = None
        self._path_prefix = f"{self.endpoint.base}/storage/v1/b/{quote(bucket, safe='')}/o/"
        self._suffix = "&userProject=" + quote(user_project, safe="") if user_project else ""
        self._host = f"Host: {self.endpoint.host_header}\r\n".encode()
        self.requests = 0
        self.retries = 0
        from concurrent.futures import ThreadPoolExecutor

        self._writes: dict[int, list[concurrent.futures.Future]] = {}
        threads = int(os.environ.get("GCPDL_SYNC_IO_THREADS", IO_THREADS))
        self.io = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gcpdl-sync-io") if threads > 0 else None

    def close(self) -> None:
        self.pool.close()
        if self.io is not None:
            self.io.shutdown(wait=True)

    async def _pwrite(self, fd: int, data: bytes, offset: int) -> None:
        """Copying into the page cache is the main CPU cost of a large download (~0.65 GB/s per
        core on a VM); the I/O threads do it beside the event loop, several at once. Every write
        handed to a thread is remembered with its descriptor until it is done (_close_part)."""
        if self.io is None:
            _pwrite_all(fd, data, offset, self.write_delay)
            return
        fut = self.io.submit(_pwrite_all, fd, data, offset, self.write_delay)
        pending = self._writes.setdefault(fd, [])
        pending[:] = [f for f in pending if not f.done()]  # only this (the loop's) thread edits it
        pending.append(fut)
        await asyncio.wrap_future(fut)

    def _close_part(self, fd: int) -> None:
        """Close a part file's descriptor only when no write handed to an I/O thread can still
        use it. A slice cancelled mid-write (another slice failed) leaves its write queued or
        running there; closed now, the descriptor's number would go to the next file opened
        (another object's part) and the write would land in it. This waits for at most the
        writes of one object, and only when a download is being abandoned."""
        pending = self._writes.pop(fd, None)
        if pending:
            concurrent.futures.wait(pending)
        os.close(fd)

    async def _on_disk_ok(self, part: str, expect_crc: int | None, expect_md5: str | None) -> bool:
        """Whether the part file holds the bytes the bucket lists, read back from disk: what
        was received was verified as it arrived, but a file written in pieces is only right if
        every piece went where it should. Costs a read from the page cache, on an I/O thread."""

        def check() -> bool:
            fd = self.fs.open_part_for_reading(part)  # owned by this thread: opened and closed here
            try:
                if expect_crc is not None:
                    return fd_crc32c(fd) == expect_crc
                return expect_md5 is not None and _b64(fd_md5(fd)) == expect_md5
            finally:
                os.close(fd)

        if self.io is None:
            return check()
        return await asyncio.get_running_loop().run_in_executor(self.io, check)

    # --- one request -------------------------------------------------------------------------
    def _request(self, name: str, generation: int, rng: tuple[int, int] | None, auth: bytes) -> bytes:
        target = f"{self._path_prefix}{quote(name, safe='')}?alt=media"
        if generation:
            target += f"&generation={generation}"
        target += self._suffix
        # Accept-Encoding: gzip stops GCS from transcoding gzip-encoded objects, so the bytes we
        # get are the stored bytes, which are what crc32c covers.
        req = f"GET {target} HTTP/1.1\r\n".encode() + self._host + auth + b"Accept-Encoding: gzip\r\n"
        if rng is not None:
            req += f"Range: bytes={rng[0]}-{rng[1] - 1}\r\n".encode()
        return req + b"\r\n"

    async def _attempt(self, name: str, generation: int, rng: tuple[int, int] | None, sink, force_auth: bool):
        """One GET. ``sink(head, reader)`` consumes a 2xx body. Returns sink's value."""
        if self.down is not None:
            raise self.down
        await self.limiter.take()
        auth = await self.auth.header(force=force_auth)
        conn = None
        reusable = False
        try:
            async with _Timeout(REQUEST_TIMEOUT) as tm:
                conn = await self.pool.get()  # a refused or reset connect is retried like the rest
                reader, writer = conn
                self.requests += 1
                writer.write(self._request(name, generation, rng, auth))
                head = await read_head(reader)
                self._heard()
                if not head.keep_alive and self.window.maximum > NO_KEEPALIVE_WINDOW:
                    self.window.cap(NO_KEEPALIVE_WINDOW)
                if 200 <= head.status < 300:
                    value = await sink(head, reader, tm)
                    reusable = head.keep_alive
                    return value
                body = await read_body(reader, head)
                reusable = head.keep_alive
                self._raise_for(head, body, name)
        except TimeoutError:  # (an OSError too: before the clause below)
            raise self._no_answer(f"no data for {REQUEST_TIMEOUT:g}s") from None
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError) as e:
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM) and not isinstance(e, ConnectionError):
                raise disk_error(e, self.dest) from None
            raise self._no_answer(f"{type(e).__name__}: {e}") from None
        finally:
            if conn is not None:
                if reusable:
                    self.pool.put(conn)
                else:
                    conn[1].close()

    def _heard(self) -> None:
        """The endpoint answered (a response head, or body bytes of a long download still
        flowing while new connections are refused): it is not down."""
        self._last_answer = self.clock()
        self._failing = 0

    def _no_answer(self, reason: str) -> Exception:
        """What to raise for an attempt that got no (whole) answer: a Retryable, or, once the
        breaker opens, the one EndpointDown every attempt in flight or to come raises."""
        self._failing += 1
        if self.down is None and self._failing >= BREAKER_FAILURES and self.clock() - self._last_answer >= self.breaker_s:
            base = f"{self.endpoint.scheme}://{self.endpoint.host_header}{self.endpoint.base}"
            self.down = EndpointDown(
                f"Cannot reach the storage endpoint {base}: no answer for {self.breaker_s:g}s ({reason}).",
                fix="Check the network (and GCPDL_STORAGE_ENDPOINT if set), then re-run: finished files are kept.",
            )
        return self.down or Retryable(reason)

    def _raise_for(self, head: Head, body: bytes, name: str) -> None:
        status = head.status
        if status in RETRY_STATUSES:
            wait = None
            if status in THROTTLE_STATUSES and head.retry_after:
                wait = retry_after_seconds(head.retry_after, self.wall_clock())
            raise Retryable(f"HTTP {status}", throttled=status in THROTTLE_STATUSES, retry_after=wait)
        if status == 401:
            raise Retryable("HTTP 401 (token refresh)")
        if status == 404:
            raise Gone(name)
        if status == 403:
            low = body[:2000].decode("utf-8", "replace").lower()
            if "requester pays" in low or "user project" in low:
                raise SyncError(f"gs://{self.bucket} is a requester-pays bucket.", fix="Pass --billing-project PROJECT_ID.")
            raise PermissionDenied(
                f"Access denied reading objects in gs://{self.bucket} for {self.identity or 'the current credentials'}.",
                fix=f"Grant it roles/storage.objectViewer on gs://{self.bucket}.",
            )
        raise ObjectFailed(f"HTTP {status}: {body[:200].decode('utf-8', 'replace').strip()}")

    async def _with_retries(self, name: str, generation: int, rng, sink):
        force_auth = False
        for attempt in range(MAX_ATTEMPTS):
            await self.window.acquire()
            throttled = False
            try:
                return await self._attempt(name, generation, rng, sink, force_auth)
            except Retryable as e:
                throttled = e.throttled
                force_auth = "401" in str(e)
                if attempt == MAX_ATTEMPTS - 1:
                    raise ObjectFailed(f"gave up after {MAX_ATTEMPTS} attempts ({e})") from None
                reason = e
            finally:
                self.window.release(throttled=throttled)
            self.retries += 1
            from gcpdl.deadline import backoff

            delay = backoff(attempt, base=self.retry_base, cap=10.0)
            if reason.retry_after is not None:  # the server said when: never sooner, at most RETRY_AFTER_MAX
                delay = max(delay, min(reason.retry_after, RETRY_AFTER_MAX))
            await self.sleep(delay)
        raise ObjectFailed(str(reason))  # pragma: no cover

    def _write_part(self, part: str, data: bytes) -> int:
        """Write ``data`` to a new part file; its mtime_ns. Touches only the parts folder's
        descriptor (open for the whole run), so it may run on an I/O thread."""
        fd = self.fs.open_part(part)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            st = os.fstat(fd)
            if st.st_size != len(data):  # nothing else may write to a fresh O_EXCL part file
                raise ObjectFailed(f"the part file holds {st.st_size} bytes, not {len(data)}")
            return st.st_mtime_ns
        finally:
            os.close(fd)

    async def _commit(self, part: str, rel: str, data: bytes | None) -> int:
        """Write ``data`` (when given) to ``part``, rename it to ``rel``; return its mtime_ns."""
        if data is None:
            mtime_ns = self.fs.part_stat(part).st_mtime_ns
        elif self.io is not None:
            mtime_ns = await asyncio.get_running_loop().run_in_executor(self.io, self._write_part, part, data)
        else:
            mtime_ns = self._write_part(part, data)
        # on the loop: folder descriptors (DirFds) belong to this thread
        self.fs.rename_into_place(part, rel)
        return mtime_ns

    # --- whole objects -----------------------------------------------------------------------
    async def fetch(self, name: str, generation: int, size: int, expect_crc: int | None, expect_md5: str | None, part: str, rel: str) -> Fetched:
        """Download into ``part`` (a name in DEST/.gcpdl/parts), verify, rename to ``rel`` (a
        path relative to DEST). On a checksum mismatch, fetch once more. Raises Blocked when a
        file, folder or link is in the way."""
        for verify_try in range(2):
            data = None
            if size > 2 * self.slice_size and expect_crc is not None:
                crc = await self._fetch_sliced(name, generation, size, part)
            else:
                crc, data = await self._fetch_whole(name, generation, size, part, expect_md5 if expect_crc is None else None)
            ok = crc == expect_crc if expect_crc is not None else crc is not None
            if ok and data is None:  # written in pieces: what is on disk decides
                ok = await self._on_disk_ok(part, expect_crc, expect_md5)
            if ok:
                break
            if data is None:
                self.fs.unlink_part(part)
        else:
            raise ObjectFailed("CRC32C mismatch twice: the downloaded bytes do not match the bucket's checksum")
        # Verified bytes are written once (on an I/O thread), then renamed into place (on the
        # loop). Creating a file is 0.1-0.4 ms of kernel time on ext4, more on a disk with many
        # recently deleted inodes (ext4 scans past them): inline, the loop sends nothing for that
        # long, requests go out in bursts and a Go server (fake-gcs-server) spends more CPU per
        # GET. os.open releases the GIL, so on a thread the loop keeps the connections busy:
        # 2,000 x 64 KB at 20 ms on 2 busy cores, engine 1.1-2.3 s on threads against 1.9-3.4 s
        # inline, same CPU (issue 11). GCPDL_SYNC_IO_THREADS=0 puts it back inline.
        try:
            mtime_ns = await self._commit(part, rel, data)
        except Blocked:
            self.fs.unlink_part(part)
            raise
        except OSError as e:
            self.fs.unlink_part(part)
            if e.errno in (errno.EISDIR, errno.ENOTDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise Blocked(rel, "folder", folder_wanted=False) from None  # made since planning
            raise disk_error(e, self.dest) from None
        return Fetched(mtime_ns, crc if crc is not None else 0)

    async def _fetch_whole(self, name: str, generation: int, size: int, part: str, md5: str | None) -> tuple[int | None, bytes | None]:
        """(crc, bytes) for a small object read in memory; (crc, None) once streamed to ``part``.
        crc is None when an MD5 (used only where no CRC32C is listed) does not match."""

        async def sink(head: Head, reader, tm):
            if head.length is not None and head.length != size:
                raise Gone(name)  # a different generation than listed
            if size <= STREAM_CHUNK and not head.chunked:
                data = await read_body(reader, head)
                self.on_bytes(len(data))
                if md5 and not _md5_ok(data, md5):
                    return None, data
                return google_crc32c.value(data), data
            crc = 0
            pos = 0
            digest = _md5(md5)
            try:
                fd = self.fs.open_part(part)
            except OSError as e:
                raise disk_error(e, self.dest) from None
            try:
                async for piece in iter_body(reader, head):
                    crc = google_crc32c.extend(crc, piece)
                    if digest is not None:
                        digest.update(piece)
                    try:
                        await self._pwrite(fd, piece, pos)
                    except OSError as e:
                        raise disk_error(e, self.dest) from None
                    pos += len(piece)
                    self.on_bytes(len(piece))
                    tm.reschedule(asyncio.get_running_loop().time() + REQUEST_TIMEOUT)
                    self._heard()
            finally:
                self._close_part(fd)
            if digest is not None and _b64(digest.digest()) != md5:
                return None, None
            return crc, None

        return await self._with_retries(name, generation, None, sink)

    async def _fetch_sliced(self, name: str, generation: int, size: int, part: str) -> int:
        try:
            fd = self.fs.open_part(part)
        except OSError as e:
            raise disk_error(e, self.dest) from None
        try:
            try:
                # reserve the space now: a full disk fails here, before any byte is fetched
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                    os.ftruncate(fd, size)
                else:
                    raise disk_error(e, self.dest) from None
            ranges = [(o, min(size, o + self.slice_size)) for o in range(0, size, self.slice_size)]
            tasks = [asyncio.ensure_future(self._fetch_slice(name, generation, fd, a, b)) for a, b in ranges]
            try:
                crcs = await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        finally:
            self._close_part(fd)
        return combine_slices([(c, b - a) for c, (a, b) in zip(crcs, ranges)])

    async def _fetch_slice(self, name: str, generation: int, fd: int, start: int, end: int) -> int:
        async def sink(head: Head, reader, tm) -> int:
            if head.status != 206:
                raise ObjectFailed(f"the server answered a ranged read with HTTP {head.status}, not 206")
            if head.length is not None and head.length != end - start:
                raise Retryable(f"slice of {head.length} bytes, expected {end - start}")
            crc = 0
            off = start
            got = 0
            async for piece in iter_body(reader, head):
                crc = google_crc32c.extend(crc, piece)
                try:
                    await self._pwrite(fd, piece, off)
                except OSError as e:
                    raise disk_error(e, self.dest) from None
                off += len(piece)
                got += len(piece)
                self.on_bytes(len(piece))
                tm.reschedule(asyncio.get_running_loop().time() + REQUEST_TIMEOUT)
                self._heard()
            if got != end - start:
                raise Retryable("short slice")
            return crc

        return await self._with_retries(name, generation, (start, end), sink)


def _pwrite_all(fd: int, data: bytes, offset: int, delay: float = 0.0) -> None:
    if delay:
        time.sleep(delay)
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _md5(expected: str | None):
    if not expected:
        return None
    import hashlib

    return hashlib.md5()


def _b64(raw: bytes) -> str:
    import base64

    return base64.b64encode(raw).decode()


def _md5_ok(data: bytes, expected: str) -> bool:
    import hashlib

    return _b64(hashlib.md5(data).digest()) == expected
