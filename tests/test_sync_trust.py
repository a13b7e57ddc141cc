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
