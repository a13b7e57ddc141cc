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
