"""Time passing, and Ctrl-C that tells the truth (issue 10 §2): `up`'s waits show the stage, the
time spent and the usual duration (a live line on a terminal, plain lines elsewhere), and a
Ctrl-C after the VM was asked for says what exists, what it costs, and how to resume or delete
it, with the VM's SSH rule in place."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys

from gcpdl.cli.up import WaitLine
from tests.fixtures.ssh import wait_until
from tests.test_help import _run_in_pty


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_plain_lines_off_a_terminal_say_stage_time_and_usual_duration():
    out, clock = io.StringIO(), Clock()
    w = WaitLine("box", stream=out, clock=clock)
    assert not w.live  # a StringIO is no terminal
    w.say("Creating box in us-central1-a...")
    clock.t += 42
    w.stage("driver")
    clock.t += 200
    w.stage("jupyter")
    clock.t += 20
    w.stage("ssh")
    w.stage("ready")
    w.say("Some note.")
    w.close()
    assert out.getvalue().splitlines() == [
        "[0:00] Creating box in us-central1-a... (usually under a minute)",
        "Setup log: gcpdl ssh box -- cat /var/log/gcpdl/startup.log",
        "[0:42] installing the NVIDIA driver... (usually 3-5 min)",
        "[4:02] starting Jupyter... (usually under a minute)",
        "[4:22] waiting for SSH and Jupyter... (usually under a minute)",
        "Some note.",
    ]


def test_live_line_on_a_terminal_redraws_in_place():
    out, clock = io.StringIO(), Clock()
    w = WaitLine("box", stream=out, clock=clock, live=True)
    w.stage("driver")
    clock.t += 83
    assert w.line() == "installing the NVIDIA driver... 1m 23s  (usually 3-5 min)"
    w.say("a message in between")
    clock.t += 100
    w.stage("ready")
    w.close()
    text = out.getvalue()
    assert "\r\x1b[Kinstalling the NVIDIA driver... 0s  (usually 3-5 min)" in text
    assert "\r\x1b[Ka message in between\n" in text  # printed on a cleared line, then redrawn
    assert text.endswith("\r\x1b[Kinstalling the NVIDIA driver: done in 3m 03s\n")


def test_live_line_cut_short_by_an_error_is_not_called_done():
    out, clock = io.StringIO(), Clock()
    w = WaitLine("box", stream=out, clock=clock, live=True)
    w.stage("driver")
    clock.t += 61
    w.close()  # what `up` does when the wait ends in an error
    assert out.getvalue().endswith("\r\x1b[Kinstalling the NVIDIA driver... 1m 01s\n")


def test_up_on_a_terminal_shows_a_live_line(env):
    rc, out = _run_in_pty(["up", "box", "--gpu", "t4", "--yes", "--no-wait"], 80, dict(os.environ))
    assert rc == 0, out
    assert "\x1b[KCreating box in us-central1-a... 0s  (usually under a minute)" in out
    assert "Creating box in us-central1-a: done in " in out


def _up_interrupted_after(env, call: str, *args: str) -> tuple[int, str]:
    """`gcpdl up box` in its own process, sent SIGINT once the fake has seen ``call``: (exit
    code, stderr)."""
    proc = subprocess.Popen([sys.executable, "-m", "gcpdl", "up", "box", "--gpu", "t4", "--yes", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert wait_until(lambda: env.calls(call), timeout=60)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stderr


def test_ctrl_c_after_the_insert_says_what_exists_and_keeps_the_ssh_rule(env):
    env.operation_polls = 200  # the insert is still running when Ctrl-C comes
    code, stderr = _up_interrupted_after(env, "compute.instances.insert", "--no-wait")
    assert code == 130, stderr
    lines = stderr.splitlines()
    tail = lines[lines.index(next(x for x in lines if x.startswith("Interrupted."))):]
    assert tail[0].startswith("Interrupted. VM box was already requested in us-central1-a, so it exists (or will in a "
                              "moment) and costs about $")
    assert tail[0].endswith("/h until you stop or delete it.")
    assert tail[1:] == ["Its SSH rule gcpdl-ssh-box is in place.", "  resume:  gcpdl up box", "  delete:  gcpdl down box"]
    assert "Traceback" not in stderr
    assert "gcpdl-ssh-box" in [f["name"] for f in env.firewalls()]  # not removed behind the VM's back
    assert env.calls("compute.firewalls.delete") == []


def test_ctrl_c_while_restarting_a_stopped_vm_says_it_runs(env):
    env.add_instance("box", status="TERMINATED", labels={"gcpdl": "managed", "gcpdl-gpu": "t4", "gcpdl-gpu-count": "1"})
    env.operation_polls = 200
    code, stderr = _up_interrupted_after(env, "compute.instances.start", "--no-wait")
    assert code == 130, stderr
    assert "Interrupted. VM box is running in us-central1-a and costs about $" in stderr
    assert "  resume:  gcpdl up box" in stderr and "Traceback" not in stderr


def test_ctrl_c_while_waiting_for_the_vm_says_it_runs(env):
    # up waits for the startup script, which never reports in this test
    code, stderr = _up_interrupted_after(env, "compute.instances.getGuestAttributes")
    assert code == 130, stderr
    assert "Interrupted. VM box is running in us-central1-a and costs about $" in stderr
    assert "  delete:  gcpdl down box" in stderr
    assert env.instance("us-central1-a", "box")["status"] == "RUNNING"


# --- sync on the VM: a relayed progress bar, and Ctrl-C that stops the engine there ---------
def test_eta_reads_in_hours_and_minutes():
    from gcpdl.sync.progress import eta_text

    assert [eta_text(s) for s in (None, 0, 20, 1900, 3900)] == ["", "", "ETA <1 min", "ETA 32 min", "ETA 1 h 05 min"]


def test_progress_records_round_trip():
    from gcpdl.sync.progress import Progress, from_record, to_record

    p = Progress(3, 10, 3000, 10000, 1, 0, 11, True, 2.5)
    assert from_record(to_record(p)) == p
    assert from_record("@gcpdl-progress {broken") is None and from_record("Fetched 3 files") is None


def _sync_vm(ssh_vm, gcs, tmp_path, monkeypatch):
    monkeypatch.setenv("GCPDL_REMOTE_PYTHON", sys.executable)
    monkeypatch.setenv("GCPDL_REMOTE_DIR", str(tmp_path / "vm-gcpdl"))
    gcs.create_bucket("vmdata", public=True)


def test_sync_on_a_vm_shows_a_bar_relayed_from_the_vm(ssh_vm, gcs, tmp_path, monkeypatch):
    _sync_vm(ssh_vm, gcs, tmp_path, monkeypatch)
    gcs.generate("vmdata", "train/", count=60, size=20000, seed=3)
    dest = tmp_path / "vm-disk" / "train"
    rc, out = _run_in_pty(["sync", "gs://vmdata/train", str(dest), "--on", "box"], 120, dict(os.environ))
    assert rc == 0, out
    assert "@gcpdl-progress" not in out  # records are taken out of the stream
    assert "100%" in out and "60/60 files" in out and "MB/s" in out
    assert len([p for p in dest.iterdir() if p.name != ".gcpdl"]) == 60


def _engine_pids(dest) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")
            except OSError:
                continue
            if str(dest).encode() in cmd and b"--local" in cmd:
                pids.append(int(d))
    return pids


def test_ctrl_c_during_sync_on_a_vm_stops_the_engine_there(ssh_vm, gcs, tmp_path, monkeypatch):
    _sync_vm(ssh_vm, gcs, tmp_path, monkeypatch)
    gcs.generate("vmdata", "slow/", count=300, size=2000, seed=5)
    gcs.faults(latency=0.2)  # slow enough that Ctrl-C comes mid-way
    dest = tmp_path / "vm-disk" / "slow"
    proc = subprocess.Popen([sys.executable, "-m", "gcpdl", "sync", "gs://vmdata/slow", str(dest), "--on", "box", "--jobs", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert wait_until(lambda: dest.is_dir() and len([p for p in dest.iterdir() if p.name != ".gcpdl"]) >= 3, timeout=120)
        assert _engine_pids(dest)  # the engine runs "on the VM" (the fixture sshd's side)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Interrupted. Stopped the sync on box; finished files are kept. Re-run the same command to resume." in stderr
    assert "Traceback" not in stderr
    assert _engine_pids(dest) == []  # nothing left running unseen
    gcs.faults(latency=0.0)
    again = subprocess.run([sys.executable, "-m", "gcpdl", "sync", "gs://vmdata/slow", str(dest), "--on", "box", "--json"],
                           capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert again.returncode == 0, again.stderr  # no "another sync is already writing"
    import json

    summary = json.loads(again.stdout)
    assert summary["skipped"] >= 3 and summary["files"] + summary["skipped"] == 300


def test_ctrl_c_during_a_local_sync_says_rerun_to_resume(gcs, tmp_path):
    gcs.create_bucket("loc", public=True)
    gcs.generate("loc", "d/", count=300, size=2000, seed=7)
    gcs.faults(latency=0.2)
    dest = tmp_path / "here"
    proc = subprocess.Popen([sys.executable, "-m", "gcpdl", "sync", "gs://loc/d", str(dest), "--local", "--jobs", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        assert wait_until(lambda: dest.is_dir() and len([p for p in dest.iterdir() if p.name != ".gcpdl"]) >= 2, timeout=120)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        gcs.faults(latency=0.0)
    assert proc.returncode == 130, stderr
    assert stderr.splitlines()[-1] == "Interrupted. Finished files are kept; re-run the same command to resume."
