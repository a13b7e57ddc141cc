"""DEST full or read-only, on real small file systems (a 1 MiB tmpfs; skipped where mounting is
not allowed). One clear line, finished files kept, no part files left."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from gcpdl.cli.app import cli


def _mount(mnt: Path, options: str) -> None:
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("needs permission to mount a tmpfs")


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    _mount(mnt, "size=1m")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def readonly_fs(tmp_path):
    mnt = tmp_path / "ro"
    _mount(mnt, "size=1m")
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def run_sync(*args: str):
    return CliRunner().invoke(cli, ["sync", *args, "--local", "--retry-base", "0.005"])


def test_not_enough_space_is_refused_before_any_download(gcs, small_fs):
    gcs.create_bucket("dset", public=True)
    gcs.generate("dset", "d/", count=4, size=600_000, seed=1)  # 2.4 MB for a 1 MiB disk
    dest = small_fs / "data"
    r = run_sync("gs://dset/d", str(dest))
    assert r.exit_code == 1
    assert re.fullmatch(
        rf"Error: Not enough space on {re.escape(str(dest))}: 2\.4 MB to fetch, \d+\.\d KB free\. Free some space,"
        r" pick a bigger disk, or narrow the sync with --include/--exclude\.\n",
        r.stderr,
    ), r.stderr
    assert gcs.counters().get("kind:media", 0) == 0
    assert not dest.exists()


def test_disk_filling_up_mid_sync_stops_cleanly(gcs, small_fs, tmp_path):
    """Another writer fills the disk after the check: ENOSPC mid-write is one line, and what was
    finished stays (verified), with no part file left."""
    from gcpdl.clients import ClientFactory
    from gcpdl.errors import SyncError
    from gcpdl.settings import resolve
    from gcpdl.sync.engine import SyncOptions, run_sync as engine_sync
    from gcpdl.sync.url import parse_gs_url

    gcs.create_bucket("dset", public=True)
    gcs.generate("dset", "d/", count=8, size=300_000, seed=1)
    dest = small_fs / "data"
    opts = SyncOptions(source=parse_gs_url("gs://dset/d"), dest=dest, jobs=1, disk_free=lambda p: 10**12)
    with pytest.raises(SyncError) as e:
        engine_sync(opts, ClientFactory(resolve()))
    assert e.value.message == f"No space left on {dest}."
    assert e.value.fix == "Free some space or pick a bigger disk, then re-run: finished files are kept."
    finished = sorted(p.name for p in dest.iterdir() if p.name != ".gcpdl")
    assert 1 <= len(finished) < 8
    for name in finished:
        assert (dest / name).read_bytes() == gcs.object_bytes("dset", "d/" + name)
    assert os.listdir(dest / ".gcpdl" / "parts") == []


def test_read_only_dest(gcs, readonly_fs):
    gcs.create_bucket("dset", public=True)
    gcs.put("dset", "d/a", b"a")
    dest = readonly_fs / "data"
    r = run_sync("gs://dset/d", str(dest))
    assert r.exit_code == 1
    assert r.stderr == f"Error: Cannot write to {dest}: Read-only file system. Pick a writable DEST.\n"
    assert gcs.counters().get("kind:media", 0) == 0


def _fill(fs: Path) -> Path:
    """Another process takes every free block of ``fs``."""
    filler = fs / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_disk_full_under_the_state_file_is_one_error_and_a_rerun_completes(gcs, small_fs, monkeypatch):
    """Empty objects need no data blocks, so the first write that meets the full disk is SQLite's
    (the state flush): it is reported as the full disk it is, part files are removed, the state
    stays readable, and a re-run after freeing space finishes without downloading again what is
    already there."""
    import sqlite3

    import gcpdl.sync.state as state_mod
    from gcpdl.clients import ClientFactory
    from gcpdl.errors import SyncError
    from gcpdl.settings import resolve
    from gcpdl.sync.engine import SyncOptions, run_sync as engine_sync
    from gcpdl.sync.url import parse_gs_url

    monkeypatch.setattr(state_mod, "FLUSH_ROWS", 50)
    gcs.create_bucket("dset", public=True)
    gcs.generate("dset", "d/", count=2000, size=0, seed=1)
    dest = small_fs / "data"
    filled: list[Path] = []

    def on_progress(p) -> None:
        if not filled and p.files_done >= 100:
            filled.append(_fill(small_fs))

    opts = SyncOptions(source=parse_gs_url("gs://dset/d"), dest=dest, jobs=8, progress_interval=0.005)
    with pytest.raises(SyncError) as e:
        engine_sync(opts, ClientFactory(resolve()), on_progress=on_progress)
    assert e.value.message == f"No space left on {dest}."
    assert e.value.fix == "Free some space or pick a bigger disk, then re-run: finished files are kept."
    assert filled
    assert os.listdir(dest / ".gcpdl" / "parts") == []
    with sqlite3.connect(dest / ".gcpdl" / "state.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        recorded = {p for (p,) in db.execute("SELECT path FROM files")}
    assert recorded <= {p.name for p in dest.iterdir()}

    filled[0].unlink()
    media = gcs.counters().get("kind:media", 0)
    fetched_before = len([p for p in dest.iterdir() if p.name != ".gcpdl"])
    s = engine_sync(SyncOptions(source=parse_gs_url("gs://dset/d"), dest=dest), ClientFactory(resolve()))
    assert s.complete and s.files + s.skipped == 2000
    assert gcs.counters().get("kind:media", 0) - media == 2000 - fetched_before
