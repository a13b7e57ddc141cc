"""Sync never writes or deletes outside DEST and never looks complete when it is not (issue 9,
items 9-14): symlinks in DEST and in its state folder, control characters in object names,
files and folders in the way, the exit code of an incomplete sync, the shipped wheel's hash."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from gcpdl.cli.app import cli
from gcpdl.sync.paths import Unsafe, relative_path

from tests.helpers import tree


def run_sync(*args: str):
    return CliRunner().invoke(cli, ["sync", *args, "--local", "--retry-base", "0.005"])


# --- 12: control characters ---------------------------------------------------------------------
@pytest.mark.parametrize("ch", ["\t", "\x07", "\x1b", "\x7f", "\x01", "\n", "\r", "\x1f", "\x85", "\x9b"])
def test_control_characters_are_unsafe(ch):
    got = relative_path(f"d/a{ch}b", "d/")
    assert got == Unsafe(f"d/a{ch}b", "contains a control character")


def test_names_with_control_characters_are_skipped_with_the_name_escaped(gcs, tmp_path):
    gcs.create_bucket("dset", public=True)
    gcs.put_many("dset", {"d/ok": b"ok", "d/tab\there": b"x", "d/\x1b[31mred": b"x", "d/bell\x07": b"x", "d/del\x7f": b"x"})
    dest = tmp_path / "o"
    r = run_sync("gs://dset/d", str(dest), "--json")
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr and "\t" not in r.stderr
    assert "Warning: Skipping object 'd/tab\\there': its name contains a control character." in r.stderr
    assert "Warning: Skipping object 'd/\\x1b[31mred': its name contains a control character." in r.stderr
    assert json.loads(r.stdout)["unsafe"] == 4
    assert tree(dest) == {"ok": b"ok"}


# --- 14: an incomplete sync does not look complete ----------------------------------------------
INCOMPLETE = 3


def test_objects_changed_during_the_sync_make_it_incomplete(gcs, tmp_path):
    gcs.create_bucket("dset", public=True)
    gcs.put_many("dset", {"d/a": b"a", "d/b": b"b", "d/c": b"c"})
    gcs.faults(fail_status=404, fail_count=1, fail_match="d/b", fail_kinds=["media"])  # deleted after the listing
    dest = tmp_path / "o"
    r = run_sync("gs://dset/d", str(dest), "--json")
    assert r.exit_code == INCOMPLETE, r.stderr
    s = json.loads(r.stdout)
    assert (s["complete"], s["missing"], s["gone"], s["files"]) == (False, 1, 1, 2)
    assert r.stderr.strip().splitlines()[-1] == (
        "Error: Sync incomplete: 1 of 3 objects is not in DEST (1 changed in the bucket during the sync)."
        " Re-run to fetch 1 object."
    )
    r = run_sync("gs://dset/d", str(dest), "--json")
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert (s["complete"], s["missing"], s["files"], s["skipped"]) == (True, 0, 1, 2)


def test_failed_objects_make_it_incomplete_with_the_names(gcs, tmp_path):
    gcs.create_bucket("dset", public=True)
    gcs.put_many("dset", {"d/good": b"g", "d/bad": b"b"})
    gcs.faults(corrupt=10, corrupt_match="d/bad")
    r = run_sync("gs://dset/d", str(tmp_path / "o"), "--json")
    assert r.exit_code == INCOMPLETE
    assert json.loads(r.stdout)["complete"] is False
    assert r.stderr.strip().splitlines()[-1] == (
        "Error: Sync incomplete: 1 of 2 objects is not in DEST (1 failed: d/bad (CRC32C mismatch twice: the"
        " downloaded bytes do not match the bucket's checksum)). Re-run to fetch 1 object."
    )


def test_skipped_names_make_it_incomplete_unless_excluded(gcs, tmp_path):
    gcs.create_bucket("dset", public=True)
    gcs.put_many("dset", {"d/ok": b"ok", "d/../x": b"evil", "d/f": b"file", "d/f/in": b"collides"})
    dest = tmp_path / "o"
    r = run_sync("gs://dset/d", str(dest), "--json")
    assert r.exit_code == INCOMPLETE
    assert r.stderr.strip().splitlines()[-1] == (
        "Error: Sync incomplete: 2 of 4 objects are not in DEST (1 in the way of another file or folder,"
        " 1 with a name that cannot be written safely). Move what is in the way (see the warnings),"
        " or leave those names out with --exclude."
    )
    r = run_sync("gs://dset/d", str(dest), "--json", "--exclude", "../x", "--exclude", "f/in")
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert (s["complete"], s["filtered"], s["unsafe"], s["collisions"]) == (True, 2, 0, 0)


# --- 10: gcpdl's own state folder ---------------------------------------------------------------
@pytest.fixture
def victim(tmp_path) -> Path:
    v = tmp_path / "victim"
    v.mkdir()
    (v / "thesis.tex").write_bytes(b"years of work")
    (v / "0.part").write_bytes(b"not gcpdl's")
    return v


@pytest.mark.parametrize("link", [".gcpdl", ".gcpdl/parts"])
def test_a_symlinked_state_or_parts_folder_is_refused(gcs, tmp_path, victim, link):
    gcs.create_bucket("dset", public=True)
    gcs.put("dset", "d/a", b"a")
    dest = tmp_path / "o"
    (dest / ".gcpdl").mkdir(parents=True)
    if link == ".gcpdl":
        (dest / ".gcpdl").rmdir()
    (dest / link).symlink_to(victim)
    r = run_sync("gs://dset/d", str(dest))
    assert r.exit_code == 2, r.stderr
    assert r.stderr == (
        f"Error: {dest / link} is a symbolic link; gcpdl keeps its state only in a real folder inside DEST."
        f" Remove the link and re-run.\n"
    )
    assert sorted(os.listdir(victim)) == ["0.part", "thesis.tex"]
    assert gcs.counters().get("kind:media", 0) == 0


def test_only_part_files_gcpdl_made_are_removed(gcs, tmp_path):
    gcs.create_bucket("dset", public=True)
    gcs.put("dset", "d/a", b"a")
    dest = tmp_path / "o"
    parts = dest / ".gcpdl" / "parts"
    parts.mkdir(parents=True)
    (parts / "17.part").write_bytes(b"left by a killed run")
    (parts / "notes.txt").write_bytes(b"someone else's")
    r = run_sync("gs://dset/d", str(dest))
    assert r.exit_code == 0, r.stderr
    assert os.listdir(parts) == ["notes.txt"]


# --- 11: symlinks inside DEST are never followed ------------------------------------------------
def test_a_folder_symlink_in_dest_is_not_followed(gcs, tmp_path):
    gcs.create_bucket("dset", public=True)
    gcs.put_many("dset", {"d/sub/x": b"x", "d/sub/deep/y": b"y", "d/ok": b"ok"})
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "o"
    dest.mkdir()
    (dest / "sub").symlink_to(outside)
    r = run_sync("gs://dset/d", str(dest), "--json")
    assert r.exit_code == 3, r.stderr
    assert "Warning: Skipping 'd/sub/x': 'sub' in DEST is a symbolic link; gcpdl never writes through links." in r.stderr
    assert os.listdir(outside) == []
    assert json.loads(r.stdout)["collisions"] == 2
    assert (dest / "ok").read_bytes() == b"ok"


def test_a_folder_swapped_for_a_symlink_mid_sync_gets_nothing(gcs, tmp_path):
    """Another process replaces DEST/a with a link to a folder outside DEST while files are still
    being written into DEST/a: not one byte lands outside."""
    from gcpdl.clients import ClientFactory
    from gcpdl.settings import resolve
    from gcpdl.sync.engine import SyncOptions, run_sync as engine_sync
    from gcpdl.sync.url import parse_gs_url

    gcs.create_bucket("dset", public=True)
    gcs.generate("dset", "d/a/", count=300, size=100, seed=4)
    gcs.faults(latency=0.01)
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "o"
    swapped_at = []

    def on_progress(p) -> None:
        if not swapped_at and p.files_done >= 20:
            swapped_at.append(p.files_done)
            os.rename(dest / "a", dest / "a.moved")
            os.symlink(outside, dest / "a")

    opts = SyncOptions(source=parse_gs_url("gs://dset/d"), dest=dest, jobs=4, progress_interval=0.01)
    engine_sync(opts, ClientFactory(resolve()), on_progress=on_progress)
    assert swapped_at and swapped_at[0] < 300
    assert os.listdir(outside) == []
    for p in (dest / "a.moved").iterdir():
        assert p.read_bytes() == gcs.object_bytes("dset", "d/a/" + p.name)


# --- 13: a file or folder of DEST in the way ----------------------------------------------------
def test_a_folder_or_file_in_the_way_is_found_before_fetching(gcs, tmp_path):
    gcs.create_bucket("dset", public=True)
    gcs.put_many("dset", {"d/x": b"x" * 5000, "d/y/z": b"z", "d/ok": b"ok"})
    dest = tmp_path / "o"
    (dest / "x").mkdir(parents=True)
    (dest / "x" / "mine").write_bytes(b"mine")
    (dest / "y").write_bytes(b"a file of mine")
    for _ in range(2):
        before = gcs.counters().get("kind:media", 0)
        r = run_sync("gs://dset/d", str(dest), "--json")
        assert r.exit_code == 3, r.stderr
        warnings = [l for l in r.stderr.splitlines() if l.startswith("Warning:")]
        assert warnings == [
            "Warning: Skipping 'd/x': 'x' in DEST is a folder, not a file.",
            "Warning: Skipping 'd/y/z': 'y' in DEST is a file, not a folder.",
        ]
        s = json.loads(r.stdout)
        assert s["blocked"] == [{"name": "d/x", "path": "x", "reason": "is a folder, not a file"},
                                {"name": "d/y/z", "path": "y", "reason": "is a file, not a folder"}]
        assert gcs.counters().get("kind:media", 0) - before == (1 if _ == 0 else 0)  # only d/ok, once
    assert (dest / "x" / "mine").read_bytes() == b"mine" and (dest / "y").read_bytes() == b"a file of mine"


def test_a_link_planted_as_a_part_file_is_removed_not_written_through(gcs, tmp_path):
    gcs.create_bucket("dset", public=True)
    gcs.put_many("dset", {"d/a": b"a" * 3000, "d/b": b"b" * 3000})
    precious = tmp_path / "precious"
    precious.write_bytes(b"keep me")
    parts = tmp_path / "o" / ".gcpdl" / "parts"
    parts.mkdir(parents=True)
    for i in range(4):
        (parts / f"{i}.part").symlink_to(precious)
    r = run_sync("gs://dset/d", str(tmp_path / "o"))
    assert r.exit_code == 0, r.stderr
    assert precious.read_bytes() == b"keep me"
    assert os.listdir(parts) == []
    assert tree(tmp_path / "o") == {"a": b"a" * 3000, "b": b"b" * 3000}


def test_folder_descriptors_refuse_links_and_files_and_survive_a_swap(tmp_path):
    from gcpdl.sync.destfs import Blocked, DirFds

    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "f").write_bytes(b"")
    (root / "l").symlink_to(tmp_path)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    dirs = DirFds(fd, max_open=2)
    try:
        with pytest.raises(Blocked) as e:
            dirs.get("l/x", create=True)
        assert (e.value.path, e.value.reason) == ("l", "is a symbolic link; gcpdl never writes through links")
        with pytest.raises(Blocked) as e:
            dirs.get("f/x", create=True)
        assert (e.value.path, e.value.reason) == ("f", "is a file, not a folder")
        assert dirs.get("new/deep", create=False) is None and not (root / "new").exists()
        b = dirs.get("a/b", create=True)
        os.rename(root / "a", root / "a.moved")  # someone moves the folder and plants a link
        (root / "a").symlink_to(tmp_path)
        os.mkdir("made", dir_fd=b)
        assert (root / "a.moved" / "b" / "made").is_dir() and not (tmp_path / "b").exists()
        dirs.get("c/d/e", create=True)  # more folders than max_open: the oldest are closed
        assert (root / "c" / "d" / "e").is_dir()
    finally:
        dirs.close()
        os.close(fd)
