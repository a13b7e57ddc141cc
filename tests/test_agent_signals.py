"""Signal readers on fixture input: nvidia-smi output, ps tables, sync locks, the real /proc."""

from __future__ import annotations

import os
import subprocess

import pytest

from gcpdl.agent import signals as sig


def test_nvidia_smi_output_parsed():
    assert sig.parse_nvidia_smi("0\n87\n\n") == [0.0, 87.0]
    with pytest.raises(ValueError):
        sig.parse_nvidia_smi("[N/A]\n")  # unreadable -> the GPU signal says unknown


def test_nvidia_smi_reader_runs_the_query(monkeypatch, tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --query-gpu=utilization.gpu ] && printf '12\\n3\\n'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert sig.nvidia_smi_reader() == [12.0, 3.0]
    assert sig.GpuSignal(reader=sig.nvidia_smi_reader).read() == sig.Reading("gpu", sig.BUSY, "utilisation 12%/3%")


def test_nvidia_smi_failing_is_unknown(monkeypatch, tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver' >&2\nexit 9\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert sig.GpuSignal(reader=sig.nvidia_smi_reader).read().state == sig.UNKNOWN


PS = """\
    PID    PPID COMMAND
      1       0 /sbin/init
    812       1 sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups
   2001     812 sshd: alice [priv]
   2007    2001 sshd: alice@pts/0
   2008    2007 -bash
   3001     812 sshd-session: bob [priv]
   3007    3001 sshd-session: bob@notty
   4001     812 sshd: carol [priv]
   4007    4001 sshd: carol@notty
   4010    4007 bash -c python3 train.py
"""


def test_ssh_sessions_classified():
    assert sig.ssh_sessions(sig.parse_ps(PS)) == ["alice on pts/0", "carol running a command"]
    tunnel_only = [p for p in sig.parse_ps(PS) if p.pid in (1, 812, 3001, 3007)]
    assert sig.ssh_sessions(tunnel_only) == []
    assert sig.SshSignal(table=lambda: tunnel_only).read().state == sig.IDLE


def test_unreadable_process_table_is_unknown():
    def broken():
        raise PermissionError("/proc")

    assert sig.SshSignal(table=broken).read().state == sig.UNKNOWN
    assert sig.SyncSignal("/nonexistent", table=broken).read().state == sig.UNKNOWN


@pytest.mark.parametrize(
    "args, expected",
    [
        ("gcpdl sync gs://bucket/data /data", True),
        ("/usr/bin/python3 /opt/gcpdl/gcpdl.pyz sync gs://b/x /data", True),
        ("/home/u/.venv/bin/python -m gcpdl.sync.remote --manifest m.json", True),
        ("bash -c gcpdl sync gs://b /data", True),
        ("/usr/bin/python3 -s -m gcpdl.agent --no-gpu", False),
        ("rsync -a /a /b", False),
        ("python3 train.py --sync-bn", False),
    ],
)
def test_sync_command_lines(args, expected):
    assert sig.is_sync_command(args) is expected


def test_sync_lock_without_a_pid_is_unknown(tmp_path):
    lock = tmp_path / "sync.lock"
    lock.write_text("garbage")
    assert sig.SyncSignal(str(lock), table=lambda: []).read().state == sig.UNKNOWN


def test_real_proc_table_sees_a_child_and_its_parent():
    child = subprocess.Popen(["sleep", "30"])
    try:
        procs = {p.pid: p for p in sig.proc_table()}
        assert procs[child.pid].ppid == os.getpid()
        assert procs[child.pid].args == "sleep 30"
        table_sync = sig.SyncSignal("/nonexistent", table=sig.proc_table).read()
        assert table_sync.state in (sig.IDLE, sig.BUSY)
    finally:
        child.kill()
        child.wait()


def test_holding_sync_lock_is_seen_by_the_agent_and_cleaned_up(tmp_path):
    lock = tmp_path / "sync.lock"
    signal = sig.SyncSignal(str(lock), table=lambda: [])
    with sig.holding_sync_lock(str(lock)) as held:
        assert held and lock.read_text() == f"{os.getpid()}\n"
        assert signal.read().state == sig.BUSY
    assert not lock.exists()
    assert signal.read().state == sig.IDLE
    with sig.holding_sync_lock(str(tmp_path / "no-such-dir" / "sync.lock")) as held:
        assert held is False  # off the VM: nothing to tell
