"""gcp-storage-emulator (PyPI) in its own process, with the same seeding API as our stand-in.

It is an implementation written elsewhere, so running the engine against it too means we are not
only testing against our own reading of the JSON API. Its limits, which callers must plan for:
single-threaded and HTTP/1.0 (one connection per request), ignores maxResults/pageToken (one page
holds everything), keeps all metadata in one JSON file (`.meta`) that it rewrites on every upload,
so uploads get slower as the bucket grows, and reads that file only at start-up.

Bulk seeding therefore writes the data directory directly: stop the emulator, add the files and
their resources to `.meta` (built by the emulator's own `_make_object_resource`/`_checksums`, so
hashes come from its code, not ours), start it again on the same port. Small seeds use its upload
API.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

from tests.fakes import gcs_data
from tests.fixtures.ports import free_port, stop_process, wait_for_port

DIRECT_SEED_THRESHOLD = 20  # more objects than this: write the data directory instead of uploading


class GcsEmulator:
    def __init__(self, data_dir: Path, host: str = "127.0.0.1", port: int | None = None, log_path: Path | None = None):
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port()
        self.url = f"http://{host}:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    # --- process -----------------------------------------------------------------------------
    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gcp_storage_emulator", "-d", str(self.data_dir), "start",
             "--host", self.host, "--port", str(self.port), "-q"],
            stdout=log, stderr=log,
        )
        wait_for_port(self.port, self.host, timeout=30, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    # --- HTTP (HTTP/1.0 server: a fresh connection per request) ------------------------------
    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def reset(self) -> None:
        status, body = self._request("GET", "/wipe")
        if status != 200:
            raise RuntimeError(f"emulator wipe failed: {status} {body[:200]!r}")

    def create_bucket(self, name: str, public: bool = False, requester_pays: bool = False, readers=None) -> None:
        """public/requester_pays/readers are accepted for symmetry with the stand-in; the emulator
        enforces no access control."""
        status, body = self._request("POST", "/storage/v1/b?project=test-project", json.dumps({"name": name}).encode(),
                                     {"Content-Type": "application/json"})
        if status != 200:
            raise RuntimeError(f"emulator create_bucket failed: {status} {body[:200]!r}")

    def put(self, bucket: str, name: str, data: bytes, content_type: str | None = None) -> None:
        # multipart, like google-cloud-storage's small uploads: the emulator's uploadType=media
        # path crashes on an empty body
        ctype = content_type or "application/octet-stream"
        boundary = "gcpdl-seed-boundary"
        body = (
            f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n"
            + json.dumps({"name": name, "contentType": ctype})
            + f"\r\n--{boundary}\r\nContent-Type: {ctype}\r\n\r\n"
        ).encode() + bytes(data) + f"\r\n--{boundary}--\r\n".encode()
        path = f"/upload/storage/v1/b/{bucket}/o?uploadType=multipart"
        status, resp = self._request("POST", path, body, {"Content-Type": f'multipart/related; boundary="{boundary}"'})
        if status != 200:
            raise RuntimeError(f"emulator upload failed: {status} {resp[:200]!r}")

    def put_many(self, bucket: str, objects: dict[str, bytes], content_type: str | None = None) -> None:
        if len(objects) <= DIRECT_SEED_THRESHOLD:
            for name, data in objects.items():
                self.put(bucket, name, data, content_type)
        else:
            self.seed_directly(bucket, objects.items(), content_type)

    def generate(self, bucket: str, prefix: str, count: int, size: int, seed: int = 0) -> list[str]:
        """The same names and bytes as GcsStandIn.generate, so the two servers hold the same data."""
        names = [gcs_data.generated_name(prefix, i, count) for i in range(count)]
        items = ((n, gcs_data.generated_bytes(seed, gcs_data.offset_for(n, seed), size)) for n in names)
        if count <= DIRECT_SEED_THRESHOLD:
            for n, data in items:
                self.put(bucket, n, data)
        else:
            self.seed_directly(bucket, items)
        return names

    def seed_directly(self, bucket: str, items, content_type: str | None = None) -> None:
        from gcp_storage_emulator.handlers.objects import _checksums, _make_object_resource

        self.stop()
        try:
            root = self.data_dir / ".cloudstorage"
            meta_path = root / ".meta"
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
            if bucket not in (meta.get("buckets") or {}):
                raise RuntimeError(f"emulator has no bucket {bucket!r}: create it first")
            objs = meta.setdefault("objects", {}).setdefault(bucket, {})
            for name, data in items:
                data = bytes(data)
                path = root / bucket / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
                res = _make_object_resource(self.url, bucket, name, content_type or "application/octet-stream", str(len(data)))
                objs[name] = _checksums(data, res)
            tmp = meta_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(meta))
            os.replace(tmp, meta_path)
        finally:
            self.start()

    def object_bytes(self, bucket: str, name: str) -> bytes:
        return (self.data_dir / ".cloudstorage" / bucket / name).read_bytes()

    def delete(self, bucket: str, name: str) -> bool:
        status, _ = self._request("DELETE", f"/storage/v1/b/{bucket}/o/{quote(name, safe='')}")
        return status in (200, 204)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
