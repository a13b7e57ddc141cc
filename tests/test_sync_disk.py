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
