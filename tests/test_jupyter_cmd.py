"""`gcpdl jupyter` end to end: fake Compute, the real sshd, the real jupyter server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from gcpdl.jupyter import parse_server_list, redact
from tests.fixtures.ports import free_port

from tests.helpers import run


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gcpdl", "jupyter", "box", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )


def _stop(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


def test_tunnel_url_works_and_ctrl_c_closes_cleanly(ssh_vm, jupyter_server):
    proc = _start("--no-browser")
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith(f"/?token={jupyter_server.token}"), url
        base = url.split("?")[0]
        for _ in range(5):
            r = requests.get(base + "api/status", headers={"Authorization": f"token {jupyter_server.token}"}, timeout=10)
            assert r.status_code == 200
        assert requests.get(base + "api/status", timeout=10).status_code == 403  # the token matters
    finally:
        code, err = _stop(proc)
    assert code == 0, err
    assert "Tunnel closed." in err
    assert jupyter_server.token not in err  # the token is on stdout only
    assert "Traceback" not in err


def test_json_output(ssh_vm, jupyter_server):
    port = free_port()
    proc = _start("--json", "--port", str(port))
    try:
        text = ""
        while not text.rstrip().endswith("}"):
            text += proc.stdout.readline()
        data = json.loads(text)
        assert data == {
            "name": "box",
            "url": f"http://127.0.0.1:{port}/?token={jupyter_server.token}",
            "local_port": port,
            "remote_port": jupyter_server.port,
        }
    finally:
        code, _ = _stop(proc)
    assert code == 0


def test_busy_explicit_port_fails_before_any_api_call(ssh_vm):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        busy = s.getsockname()[1]
        r = run("jupyter", "box", "--port", str(busy))
    assert r.exit_code == 2
    assert r.stderr == f"Error: Local port {busy} is already in use. Pick another with --port, or stop what is using it.\n"
    assert ssh_vm.gcp.requests == []


def test_vm_not_running(ssh_vm):
    ssh_vm.gcp.add_instance("cold", zone="us-central1-a", status="TERMINATED")
    r = run("jupyter", "cold")
    assert r.exit_code == 1
    assert r.stderr == "Error: VM cold is stopped, not running. Start it with: gcpdl start cold\n"


@pytest.fixture
def other_sshd(sshd_factory, ssh_vm, monkeypatch, tmp_path):
    """Point the VM at another sshd (same host keys) configured for one fault."""

    def start(runtime_dir: Path | None = None, **options: str):
        env = dict(sshd_factory.set_env)
        if runtime_dir is not None:
            env["JUPYTER_RUNTIME_DIR"] = str(runtime_dir)
        server = sshd_factory.start(set_env=env, **options)
        monkeypatch.setenv("GCPDL_SSH_PORT", str(server.port))
        return server

    return start


def test_jupyter_down_shows_status_and_log(other_sshd, tmp_path):
    empty = tmp_path / "runtime"
    empty.mkdir()
    other_sshd(runtime_dir=empty)
    r = run("jupyter", "box")
    assert r.exit_code == 1
    lines = r.stderr.splitlines()
    assert lines[-1] == (
        "Error: Jupyter is not running on the VM box (`jupyter server list` found no server). "
        "Restart it with: gcpdl ssh box -- sudo systemctl restart gcpdl-jupyter.service"
    )
    assert len(lines) >= 2 and all(ln.startswith("  ") for ln in lines[:-1])  # service status / log tail


def test_stale_server_file_is_reported_as_down(other_sshd, tmp_path):
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    port = free_port()  # nothing listens there
    info = {"base_url": "/", "hostname": "127.0.0.1", "password": False, "pid": os.getpid(), "port": port,
            "root_dir": "/", "secure": False, "sock": "", "token": "stale-token", "url": f"http://127.0.0.1:{port}/", "version": "2"}
    (runtime / f"jpserver-{os.getpid()}.json").write_text(json.dumps(info))
    other_sshd(runtime_dir=runtime)
    r = run("jupyter", "box")
    assert r.exit_code == 1
    assert r.stderr.splitlines()[-1].startswith(f"Error: Jupyter on VM box does not answer on port {port}. Restart it with: ")
    assert "stale-token" not in r.stderr


def test_forwarding_refused(other_sshd):
    other_sshd(AllowTcpForwarding="no")
    r = run("jupyter", "box")
    assert r.exit_code == 1
    assert r.stderr == (
        "Error: The VM's sshd refuses port forwarding (AllowTcpForwarding no), so gcpdl cannot tunnel to Jupyter. "
        "Set AllowTcpForwarding yes in /etc/ssh/sshd_config on the VM and restart sshd.\n"
    )


def test_server_list_parsing_prefers_gcpdl_service():
    text = "\n".join([
        "[JupyterServerListApp] some log line",
        json.dumps({"port": 9999, "hostname": "localhost", "token": "a", "base_url": "/"}),
        json.dumps({"port": 8888, "hostname": "127.0.0.1", "token": "secret-b", "base_url": "/x/"}),
    ])
    servers = parse_server_list(text)
    assert [(s.port, s.host) for s in servers] == [(9999, "127.0.0.1"), (8888, "127.0.0.1")]
    from gcpdl.jupyter import choose

    chosen = choose(servers)
    assert chosen.port == 8888 and chosen.url(8890) == "http://127.0.0.1:8890/x/?token=secret-b"
    assert "secret-b" not in repr(chosen)  # never in a log line by accident
    assert redact("http://127.0.0.1:8888/lab?token=abc123 x") == "http://127.0.0.1:8888/lab?token=<redacted> x"
