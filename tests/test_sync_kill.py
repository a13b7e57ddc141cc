"""kill -9 at an arbitrary moment, then re-run: byte-identical files, and only what was unfinished
is fetched again. The first run is a real `gcpdl sync` process against the stand-in with latency."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from gcpdl.cli.app import cli

from tests.helpers import local_files as _files

REPO = Path(__file__).resolve().parents[1]


def test_kill_minus_9_then_rerun_fetches_only_the_unfinished(gcs, tmp_path):
    gcs.create_bucket("killme", public=True)
    names = gcs.generate("killme", "d/", count=300, size=20_000, seed=9)
    (big,) = gcs.generate("killme", "d/-big/", count=1, size=6 * 1024 * 1024 + 5, seed=4)
    names.append(big)
    gcs.faults(latency=0.03)
    dest = tmp_path / "out"
    env = dict(os.environ, STORAGE_EMULATOR_HOST=gcs.url, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gcpdl", "sync", "gs://killme/d", str(dest), "--local", "-j", "8", "--slice-size", str(1 << 20)],
        env=env, cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while len(_files(dest)) < 60 if dest.exists() else True:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the first run made no progress"
            time.sleep(0.01)  # polling a condition another process changes; bounded above
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done_before = set(_files(dest))
    assert 60 <= len(done_before) < len(names)
    for rel, path in _files(dest).items():  # every file in place is whole: renamed only once verified
        assert path.read_bytes() == gcs.object_bytes("killme", "d/" + rel)

    gcs.faults()  # no latency for the re-run
    before = gcs.counters(detail=True)["media_by_object"]
    r = CliRunner().invoke(cli, ["sync", "gs://killme/d", str(dest), "--local", "--json", "--slice-size", str(1 << 20)])
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    unfinished = len(names) - len(done_before)
    assert s["files"] == unfinished and s["skipped"] == len(done_before) and s["failed"] == 0
    after = gcs.counters(detail=True)["media_by_object"]
    # (requests the killed process left in flight may land after `before`; they were for
    # unfinished objects too, so compare which objects were fetched, not how many requests)
    fetched = {name for name, n in after.items() if n > before.get(name, 0)}
    assert fetched == {n for n in names if n[2:] not in done_before}
    got = _files(dest)
    assert set(got) == {n[2:] for n in names}
    for rel, path in got.items():
        assert path.read_bytes() == gcs.object_bytes("killme", "d/" + rel), rel
    assert os.listdir(dest / ".gcpdl" / "parts") == []
