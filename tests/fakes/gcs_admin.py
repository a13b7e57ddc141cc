"""Start the GCS stand-in in its own process and drive its /_admin/ endpoints.

Used by tests/fixtures/storage.py and by bench/sync_bench.py, so both seed and read the server the
same way.
"""

from __future__ import annotations

import http.client
import json
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlencode

from tests.fixtures.ports import stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]


class GcsStandIn:
    """Handle on a running stand-in: `.url` is what STORAGE_EMULATOR_HOST gets."""

    def __init__(self, host: str, port: int, proc: subprocess.Popen | None = None):
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"
        self.proc = proc
        self._local = threading.local()

    # --- transport ---------------------------------------------------------------------------
    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        return c

    def _call(self, method: str, op: str, params: dict | None = None, body: bytes | dict | None = None) -> bytes:
        path = f"/_admin/{op}" + ("?" + urlencode(params) if params else "")
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        for attempt in (0, 1):  # one retry: a kept-alive connection may have been closed
            conn = self._conn()
            try:
                conn.request(method, path, body=data, headers={"Content-Length": str(len(data or b""))})
                r = conn.getresponse()
                raw = r.read()
            except (ConnectionError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
                continue
            if r.status >= 400:
                raise RuntimeError(f"stand-in admin {op}: {r.status} {raw[:200]!r}")
            return raw
        raise AssertionError("unreachable")

    def _json(self, method, op, params=None, body=None):
        return json.loads(self._call(method, op, params, body))

    # --- admin API ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget buckets, objects, faults (back to the start-up latency) and counters."""
        self._call("POST", "reset")

    def create_bucket(self, name: str, public: bool = False, requester_pays: bool = False, readers: list[str] | None = None) -> None:
        """public: anonymous reads allowed. Private buckets admit any bearer token (the token is the
        identity), or only `readers` when given."""
        self._call("POST", "buckets", body={"name": name, "public": public, "requester_pays": requester_pays, "readers": readers})

    def put(self, bucket: str, name: str, data: bytes, content_type: str | None = None) -> int:
        params = {"bucket": bucket, "name": name}
        if content_type:
            params["contentType"] = content_type
        return int(self._json("POST", "put", params, bytes(data))["generation"])

    def put_many(self, bucket: str, objects: dict[str, bytes], content_type: str | None = None) -> None:
        index = [[name, len(data), content_type] for name, data in objects.items()]
        head = json.dumps(index).encode()
        body = struct.pack(">Q", len(head)) + head + b"".join(bytes(d) for d in objects.values())
        self._call("POST", "put_many", {"bucket": bucket}, body)

    def generate(self, bucket: str, prefix: str, count: int, size: int, seed: int = 0) -> list[str]:
        """`count` objects named PREFIX000000.. of `size` deterministic bytes; returns their names."""
        from tests.fakes.gcs_data import generated_name

        self._call("POST", "generate", body={"bucket": bucket, "prefix": prefix, "count": count, "size": size, "seed": seed})
        return [generated_name(prefix, i, count) for i in range(count)]

    def object_bytes(self, bucket: str, name: str) -> bytes:
        return self._call("GET", "object", {"bucket": bucket, "name": name})

    def object_meta(self, bucket: str, name: str) -> dict:
        """The object's full JSON resource (crc32c, md5Hash, generation, size...)."""
        return self._json("GET", "meta", {"bucket": bucket, "name": name})

    def warm(self, bucket: str, prefix: str = "") -> int:
        """Compute (and cache) CRC32C and MD5 of every object under prefix now."""
        return self._json("POST", "warm", body={"bucket": bucket, "prefix": prefix})["count"]

    def delete(self, bucket: str, name: str) -> bool:
        return self._json("POST", "delete", {"bucket": bucket, "name": name})["deleted"]

    def faults(
        self,
        latency: float | None = None,
        fail_status: int | None = None,
        fail_count: int = 0,
        fail_match: str | None = None,
        reset_mid_body: int = 0,
        corrupt: int = 0,
        corrupt_match: str | None = None,
        *,
        fail_fraction: float = 0.0,
        fail_kinds: list[str] | None = None,
        reset_match: str | None = None,
        seed: int = 0,
        retry_after: str | int | None = None,
        stall: float = 0.0,
        stall_count: int = 0,
        stall_kinds: list[str] | None = None,
        replace_match: str | None = None,
        replace_after: int = 0,
        empty_pages: int = 0,
        hold_pages: float = 0.0,
    ) -> None:
        """Replace the fault set (anything not given is off; latency not given is the start-up one).

        latency: seconds before every response. fail_status (default 503) for the next fail_count
        requests, or a fail_fraction of them, limited to names matching the regex fail_match and to
        fail_kinds (bucket, list, meta, media, upload). reset_mid_body: the next N media responses
        (matching reset_match, default fail_match) send headers and half the body, then RST.
        corrupt: the next N media responses matching corrupt_match get their first byte flipped
        while x-goog-hash stays correct. retry_after: the Retry-After header of fail_status answers.
        stall: the next stall_count requests of stall_kinds (list, media) wait this many seconds
        before answering. replace_match/replace_after: the replace_after-th media request for a
        matching name is answered, then the object is overwritten (new generation, bytes b"R").
        empty_pages: the next N listing pages after the first hold no items, only a nextPageToken.
        hold_pages: listing pages after the first wait (at most this long) until a media response
        went out; counters holds_released / holds_expired say which ended the wait.
        """
        self._call("POST", "faults", body={
            "latency": latency, "fail_status": fail_status, "fail_count": fail_count, "fail_match": fail_match,
            "fail_fraction": fail_fraction, "fail_kinds": fail_kinds, "reset_mid_body": reset_mid_body,
            "reset_match": reset_match, "corrupt": corrupt, "corrupt_match": corrupt_match, "seed": seed,
            "retry_after": retry_after, "stall": stall, "stall_count": stall_count, "stall_kinds": stall_kinds,
            "replace_match": replace_match, "replace_after": replace_after, "empty_pages": empty_pages,
            "hold_pages": hold_pages,
        })

    def counters(self, detail: bool = False) -> dict:
        """requests, kind:list/meta/media/bucket/upload, bytes_served, status:N, faults:N, resets,
        corrupted, connections, max_inflight, listed_items; with detail, media_by_object."""
        return self._json("GET", "counters", {"detail": 1} if detail else None)

    def close(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
            self._local.conn = None


def start_standin(latency: float = 0.0, host: str = "127.0.0.1", log_path: Path | None = None) -> GcsStandIn:
    """Launch the server process and wait for its READY line (no sleeps, no port races: it binds
    port 0 and reports what it got)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    stderr = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.gcs_server", "--host", host, "--port", "0", "--latency", str(latency)],
        stdout=subprocess.PIPE, stderr=stderr, cwd=str(REPO_ROOT), env=env,
    )
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"GCS stand-in failed to start (got {line!r})")
    return GcsStandIn(host, int(line.split()[1]), proc)


def stop_standin(s: GcsStandIn) -> None:
    s.close()
    if s.proc is not None:
        stop_process(s.proc)
