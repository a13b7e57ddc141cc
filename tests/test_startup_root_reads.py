"""What root reads at run time on the VM: the autostop agent (root) reads the sync lock from
/run/gcpdl, a world-writable sticky directory, so the login user decides what is there. It
must never follow a link, open a FIFO or device, or read more than a pid's worth (issue 9,
items 7 and 8: root never follows links in user-writable paths)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gcpdl.agent import signals as sig


def read_lock(path: Path) -> sig.Reading:
    return sig.SyncSignal(str(path), table=lambda: []).read()


def test_a_lock_that_is_a_link_is_not_followed(tmp_path):
    root_file = tmp_path / "root-owned-pid"
    root_file.write_text("1\n")  # pid 1 is alive: followed, the link would fake a running sync
    lock = tmp_path / "sync.lock"
    lock.symlink_to(root_file)
    reading = read_lock(lock)
    assert reading.state == sig.UNKNOWN and "not a regular file" in reading.detail, reading


def test_a_lock_that_is_a_fifo_does_not_hang_the_agent(tmp_path):
    lock = tmp_path / "sync.lock"
    os.mkfifo(lock)
    # open() of a FIFO with no writer blocks for ever: in a child, so a hang fails the test
    code = ("import sys; from gcpdl.agent import signals as sig; "
            f"r = sig.SyncSignal({str(lock)!r}, table=lambda: []).read(); print(r.state, r.detail)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{sig.UNKNOWN} ") and "not a regular file" in out.stdout


def test_a_plain_lock_still_works(tmp_path):
    lock = tmp_path / "sync.lock"
    lock.write_text(f"{os.getpid()}\n")
    assert read_lock(lock).state == sig.BUSY
