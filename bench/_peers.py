"""Peer runners for bench/sync_bench.py, each run as its own process (so /usr/bin/time -v measures
its peak RSS and it does not share a GIL with the server or the bench).

  python bench/_peers.py ceiling --url URL --bucket B --names FILE [--slice BYTES --size BYTES] [--conns 64]
  python bench/_peers.py list    --url URL --bucket B --prefix P [--pages N]
  python bench/_peers.py tm      --bucket B --prefix P --dest DIR [--workers 32]
  python bench/_peers.py disk    --bucket B --dest DIR --count N --size BYTES [--workers 4]

Each prints one JSON line: {"files": N, "bytes": N, "seconds": S}.

The ceiling is the server's own capacity: a minimal asyncio client, N keep-alive connections, raw
GETs whose bodies are read and dropped (no parsing beyond Content-Length, no disk, no checksum).
Nothing a real sync does can beat it on the same server, so "% of ceiling" is how much of the
available speed a tool uses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from urllib.parse import quote, urlsplit

READ = 1 << 20


class _Conn(asyncio.BufferedProtocol):
    """One keep-alive connection that reads responses straight into a fixed buffer and drops them:
    no per-chunk bytes objects, so the client costs less than the server it measures."""

    def __init__(self, host: str, jobs, total: list[int], done: asyncio.Future):
        self.hostport = host
        self.jobs = jobs
        self.total = total
        self.done = done
        self.buf = bytearray(READ)
        self.view = memoryview(self.buf)
        self.head = bytearray()
        self.left = -1  # -1: reading headers
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self._next()

    def _next(self) -> None:
        job = next(self.jobs, None)
        if job is None:
            self.transport.close()
            return
        path, rng = job
        self.path = path
        req = f"GET {path} HTTP/1.1\r\nHost: {self.hostport}\r\n" + (f"Range: {rng}\r\n" if rng else "") + "\r\n"
        self.head.clear()
        self.left = -1
        self.transport.write(req.encode())

    def get_buffer(self, sizehint: int):
        return self.view

    def buffer_updated(self, n: int) -> None:
        if self.left < 0:
            self.head += self.view[:n]
            i = self.head.find(b"\r\n\r\n")
            if i < 0:
                return
            head = bytes(self.head[:i])
            status = int(head[9:12])
            if status not in (200, 206):
                self._fail(RuntimeError(f"{self.path}: HTTP {status}"))
                return
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            length = int(m.group(1)) if m else 0
            self.total[1] += length
            self.left = length - (len(self.head) - i - 4)
        else:
            self.left -= n
        if self.left == 0:
            self.total[0] += 1
            self._next()

    def _fail(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)
        self.transport.abort()

    def connection_lost(self, exc) -> None:
        if self.left > 0 or (self.left < 0 and self.head):
            self._fail(exc or RuntimeError(f"{self.path}: connection closed mid-response"))
        elif not self.done.done():
            self.done.set_result(None)


async def _fetch(host: str, port: int, jobs: list[tuple[str, str | None]], conns: int) -> tuple[int, int]:
    loop = asyncio.get_running_loop()
    it = iter(jobs)  # shared: each job is taken by exactly one connection
    total = [0, 0]
    waits = []
    for _ in range(conns):
        done = loop.create_future()
        await loop.create_connection(lambda d=done: _Conn(f"{host}:{port}", it, total, d), host, port)
        waits.append(done)
    await asyncio.gather(*waits)
    return total[0], total[1]


def ceiling(args) -> dict:
    u = urlsplit(args.url)
    names = [n for n in open(args.names).read().split("\n") if n]
    jobs: list[tuple[str, str | None]] = []
    for n in names:
        path = f"/download/storage/v1/b/{args.bucket}/o/{quote(n, safe='')}?alt=media"
        if args.slice:
            for start in range(0, args.size, args.slice):
                jobs.append((path, f"bytes={start}-{min(start + args.slice, args.size) - 1}"))
        else:
            jobs.append((path, None))
    try:  # the ceiling should measure the server, not this client's event loop
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    t0 = time.monotonic()
    requests, nbytes = asyncio.run(_fetch(u.hostname, u.port, jobs, args.conns))
    return {"files": len(names), "requests": requests, "bytes": nbytes, "seconds": time.monotonic() - t0}


def listing(args) -> dict:
    """The listing alone, the way a lean sync lists: sequential pages of 1000, only the fields a
    sync needs, one keep-alive connection."""
    import http.client

    u = urlsplit(args.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    fields = quote("items(name,size,generation,crc32c),nextPageToken")
    token, files, nbytes, pages = "", 0, 0, 0
    t0 = time.monotonic()
    while not args.pages or pages < args.pages:
        pages += 1
        path = f"/storage/v1/b/{args.bucket}/o?prefix={quote(args.prefix)}&maxResults=1000&fields={fields}"
        if token:
            path += "&pageToken=" + quote(token)
        conn.request("GET", path)
        doc = json.loads(conn.getresponse().read())
        for item in doc.get("items", ()):
            files += 1
            nbytes += int(item["size"])
        token = doc.get("nextPageToken")
        if not token:
            break
    return {"files": files, "bytes": nbytes, "seconds": time.monotonic() - t0}


def transfer_manager(args) -> dict:
    """google-cloud-storage's own parallel download: list, then download_many_to_path with threads."""
    from google.cloud.storage import Client, transfer_manager as tm

    t0 = time.monotonic()
    client = Client(project="bench")  # anonymous under STORAGE_EMULATOR_HOST
    bucket = client.bucket(args.bucket)
    blobs = [(b.name, b.size) for b in client.list_blobs(args.bucket, prefix=args.prefix)]
    results = tm.download_many_to_path(
        bucket, [n for n, _ in blobs], destination_directory=args.dest,
        max_workers=args.workers, worker_type=tm.THREAD, raise_exception=True,
    )
    failed = [r for r in results if r is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} downloads failed: {failed[0]!r}")
    return {"files": len(blobs), "bytes": sum(s for _, s in blobs), "seconds": time.monotonic() - t0}


def disk(args) -> dict:
    """Local write capacity for the large workload: the same bytes, written by 4 threads in 16 MiB
    pwrites to preallocated files under DEST (no network, no checksum). A sync of large objects
    cannot beat the disk it writes to, whatever the server's capacity."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    chunk = bytes(16 << 20)
    t0 = time.monotonic()

    def write(i: int) -> None:
        fd = os.open(os.path.join(args.dest, f"f{i}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.posix_fallocate(fd, 0, args.size)
            for off in range(0, args.size, len(chunk)):
                os.pwrite(fd, chunk[: min(len(chunk), args.size - off)], off)
        finally:
            os.close(fd)

    with ThreadPoolExecutor(max_workers=args.workers) as ex:
        list(ex.map(write, range(args.count)))
    return {"files": args.count, "bytes": args.count * args.size, "seconds": time.monotonic() - t0}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["ceiling", "list", "tm", "disk"])
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--pages", type=int, default=0, help="list: stop after this many pages (0: all)")
    ap.add_argument("--url")
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--prefix", default="")
    ap.add_argument("--names")
    ap.add_argument("--slice", type=int, default=0)
    ap.add_argument("--size", type=int, default=0)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--dest")
    ap.add_argument("--workers", type=int, default=32)
    args = ap.parse_args(argv)
    out = {"ceiling": ceiling, "list": listing, "tm": transfer_manager, "disk": disk}[args.mode](args)
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
