"""A second `gcpdl sync --on VM` for a DEST another sync is writing says so (pid, start time) and
follows that sync's progress to its end, then reports its summary: never two writers (issue 10 §2).

Real processes: the first sync is a real `gcpdl sync --on box` through the fixture sshd (the
engine runs on the "VM" side), the second one too; the bucket is the GCS stand-in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from gcpdl.errors import SyncError
from tests.fixtures.ssh import wait_until


def test_the_lock_records_its_holder_and_busy_names_it(tmp_path):
    from gcpdl.sync.state import State, SyncBusy, read_holder

    before = time.time()
    st = State(tmp_path)
    try:
        holder = read_holder(tmp_path / ".gcpdl")
        assert holder is not None and holder.pid == os.getpid() and before - 1 <= holder.started <= time.time() + 1
        with pytest.raises(SyncBusy) as e:
            State(tmp_path)
        assert isinstance(e.value, SyncError) and e.value.holder == holder
        assert e.value.message.startswith(f"Another gcpdl sync (pid {os.getpid()}, started ")
        assert e.value.message.endswith(f" UTC) is already writing to {tmp_path}.")
    finally:
        st.close()


class _Stderr:
    """Collects a process's stderr lines as they come (read on a thread: no timed waits)."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc) -> None:
        for line in proc.stderr:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)


def _files(dest) -> int:
    return len([p for p in dest.iterdir() if p.name != ".gcpdl"]) if dest.is_dir() else 0


def test_a_second_sync_on_the_vm_follows_the_running_one(ssh_vm, gcs, tmp_path, monkeypatch):
    monkeypatch.setenv("GCPDL_REMOTE_PYTHON", sys.executable)
    monkeypatch.setenv("GCPDL_REMOTE_DIR", str(tmp_path / "vm-gcpdl"))
    gcs.create_bucket("vmdata", public=True)
    gcs.generate("vmdata", "busy/", count=120, size=2000, seed=8)
    gcs.faults(latency=0.2)  # the first sync is still running when the second one starts
    dest = tmp_path / "vm-disk" / "busy"
    cmd = [sys.executable, "-m", "gcpdl", "sync", "gs://vmdata/busy", str(dest), "--on", "box", "--jobs", "1", "--json"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    second = None
    try:
        assert wait_until(lambda: _files(dest) >= 2, timeout=120), first.stderr.read() if first.poll() is not None else ""
        second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        err2 = _Stderr(second)
        assert wait_until(lambda: "is already writing" in err2.text or second.poll() is not None, timeout=120)
        gcs.faults(latency=0.0)  # let the first one finish
        out1, err1 = first.communicate(timeout=300)
        out2 = second.stdout.read()
        second.wait(timeout=300)
        err2.thread.join(timeout=60)
    finally:
        gcs.faults(latency=0.0)
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2.text
    said = [line for line in err2.text.splitlines() if "is already writing" in line]
    assert said and said[0].startswith("Another gcpdl sync (pid "), err2.text
    assert "following its progress" in said[0]
    assert "Traceback" not in err2.text and "@gcpdl" not in err2.text
    s1, s2 = json.loads(out1), json.loads(out2)
    assert s1["files"] + s1["skipped"] == 120 and s1["complete"] is True
    assert {k: s2[k] for k in ("files", "skipped", "bytes", "complete")} == {k: s1[k] for k in ("files", "skipped", "bytes", "complete")}
    assert s2["vm"] == "box"
    assert _files(dest) == 120


def test_following_a_sync_that_was_killed_says_so(tmp_path):
    """The holder dies without a result (kill -9): the follower says so, it does not hang."""
    from gcpdl.deadline import Deadline
    from gcpdl.sync.state import State, SyncBusy, follow

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from gcpdl.sync.state import State;"
         f" s = State(Path({str(tmp_path)!r})); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(SyncBusy) as e:
            State(tmp_path)
        assert e.value.holder.pid == holder.pid
    finally:
        holder.kill()
        holder.wait()
    seen = []
    assert follow(e.value, seen.append, Deadline(60), 0.01) is None
    st = State(tmp_path)  # the lock went with the killed holder
    st.close()


def test_ctrl_c_while_following_stops_the_follower_not_the_sync(ssh_vm, gcs, tmp_path, monkeypatch):
    import signal

    monkeypatch.setenv("GCPDL_REMOTE_PYTHON", sys.executable)
    monkeypatch.setenv("GCPDL_REMOTE_DIR", str(tmp_path / "vm-gcpdl"))
    gcs.create_bucket("vmdata", public=True)
    gcs.generate("vmdata", "busy/", count=80, size=2000, seed=6)
    gcs.faults(latency=0.2)
    dest = tmp_path / "vm-disk" / "busy"
    cmd = [sys.executable, "-m", "gcpdl", "sync", "gs://vmdata/busy", str(dest), "--on", "box", "--jobs", "1", "--json"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    second = None
    try:
        assert wait_until(lambda: _files(dest) >= 2, timeout=120)
        second = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
        err2 = _Stderr(second)
        assert wait_until(lambda: "is already writing" in err2.text or second.poll() is not None, timeout=120)
        second.send_signal(signal.SIGINT)
        second.wait(timeout=120)
        err2.thread.join(timeout=60)
        assert first.poll() is None  # the holder goes on
        gcs.faults(latency=0.0)
        out1, err1 = first.communicate(timeout=300)
    finally:
        gcs.faults(latency=0.0)
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert second.returncode == 130, err2.text
    assert "Stopped following. The sync on box (pid " in err2.text and "goes on" in err2.text, err2.text
    assert "Traceback" not in err2.text
    assert first.returncode == 0, err1
    assert json.loads(out1)["files"] + json.loads(out1)["skipped"] == 80 and _files(dest) == 80
