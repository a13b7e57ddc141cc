"""`gcpdl run NAME -- CMD` on N real sshd "nodes" (tests/fixtures/cluster.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.fixtures.ssh import wait_until
from tests.helpers import run

CONTRACT = ("MASTER_ADDR", "MASTER_PORT", "NNODES", "NODE_RANK", "NPROC_PER_NODE", "WORLD_SIZE")


# This machine's root login shell runs `pyenv rehash` from ~/.bashrc (bash sources it for every
# SSH command); sessions starting at once race on it and say so on the terminal. Not our output.
NOISE = ("rm: cannot remove '/root/.pyenv/", "pyenv: cannot rehash")


def by_node(stdout: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        assert line.startswith("["), line
        node, text = line[1:].split("] ", 1)
        if not text.startswith(NOISE):
            out.setdefault(node.strip(), []).append(text)
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_every_node_gets_torchrun_contract(ssh_cluster):
    grep = "env | grep -E '^(" + "|".join(CONTRACT) + ")=' | sort; echo via $SSH_CONNECTION"
    result = run("run", "c", "--", grep)
    assert result.exit_code == 0, result.output
    nodes = by_node(result.stdout)
    assert sorted(nodes) == ["c-0", "c-1", "c-2"]
    for k in range(3):
        lines = nodes[f"c-{k}"]
        env = dict(line.split("=", 1) for line in lines if "=" in line)
        assert env == {"MASTER_ADDR": "127.0.0.2", "MASTER_PORT": "29500", "NNODES": "3", "NODE_RANK": str(k),
                       "NPROC_PER_NODE": "2", "WORLD_SIZE": "6"}
    # each node's command ran on its own node (its sshd's address)
    via = {node: [t for t in lines if t.startswith("via ")] for node, lines in nodes.items()}
    assert {n: v[0].split()[3] for n, v in via.items()} == {"c-0": "127.0.0.2", "c-1": "127.0.0.3", "c-2": "127.0.0.4"}


def test_words_are_joined_as_ssh_does_and_port_is_settable(ssh_cluster):
    result = run("run", "c", "--port", "12345", "--", "echo", "rank=$NODE_RANK", "port=$MASTER_PORT")
    assert result.exit_code == 0, result.output
    assert sorted(by_node(result.stdout).items()) == [(f"c-{k}", [f"rank={k} port=12345"]) for k in range(3)]


def test_first_failing_node_sets_exit_code_and_the_others_are_stopped(ssh_cluster, tmp_path):
    # nodes 0 and 2 start a long command; node 1 fails once they are both running
    cmd = (f"echo $$ > {tmp_path}/pid-$NODE_RANK; "
           f"if [ $NODE_RANK = 1 ]; then while [ ! -e {tmp_path}/pid-0 ] || [ ! -e {tmp_path}/pid-2 ]; do sleep 0.05; done; "
           "echo failing; exit 7; fi; exec sleep 300")
    result = run("run", "c", "--", cmd)
    assert result.exit_code == 7, result.output
    assert "Node 1 failed (exit 7); stopping the other nodes." in result.stderr
    assert "Node c-1 failed first (exit 7)." in result.stderr
    assert by_node(result.stdout)["c-1"] == ["failing"]
    pids = [int((tmp_path / f"pid-{k}").read_text()) for k in (0, 2)]
    assert wait_until(lambda: not any(alive(p) for p in pids), timeout=20)


def test_keep_going_lets_the_others_finish(ssh_cluster):
    result = run("run", "c", "--keep-going", "--", "[ $NODE_RANK = 2 ] && exit 3; echo done")
    assert result.exit_code == 3, result.output
    nodes = by_node(result.stdout)
    assert nodes["c-0"] == ["done"] and nodes["c-1"] == ["done"] and "c-2" not in nodes


def test_ctrl_c_stops_the_command_on_every_node(ssh_cluster, tmp_path):
    cmd = f"echo $$ > {tmp_path}/pid-$NODE_RANK; echo started; exec sleep 300"
    proc = subprocess.Popen([sys.executable, "-m", "gcpdl", "run", "c", "--", cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ))
    try:
        files = [tmp_path / f"pid-{k}" for k in range(3)]
        assert wait_until(lambda: all(f.exists() and f.read_text().strip() for f in files), timeout=60), proc.poll()
        pids = [int(f.read_text()) for f in files]
        assert wait_until(lambda: all(alive(p) for p in pids), timeout=5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert b"Interrupting 3 node(s)..." in err
    assert wait_until(lambda: not any(alive(p) for p in pids), timeout=20), [p for p in pids if alive(p)]
    assert b"Traceback" not in err


def test_a_stopped_node_is_refused_with_the_fix(ssh_cluster):
    ssh_cluster.gcp.preempt("us-central1-a", "c-1")
    result = run("run", "c", "--", "true")
    assert result.exit_code != 0
    assert "Not every node of cluster c is running (c-1 " in result.stderr and "gcpdl start c" in result.stderr


def test_no_such_cluster_and_no_command(env):
    result = run("run", "nope", "--", "true")
    assert result.exit_code != 0 and "No cluster named nope" in result.stderr
    result = run("run", "nope", "--", " ")
    assert result.exit_code == 2 and "No command given" in result.stderr


def test_jupyter_on_a_cluster_opens_node_0_and_forwards_ray_dashboard(ssh_cluster, jupyter_server):
    """`gcpdl jupyter c`: Jupyter on c-0, plus a second forward to what ray.json names as Ray's
    dashboard (here the session's jupyter server stands in for it: any HTTP server on node 0)."""
    import json as _json

    import requests

    note = ssh_cluster.sshds[0].home / ".gcpdl" / "ray.json"
    note.parent.mkdir(exist_ok=True)
    note.write_text(_json.dumps({"version": "x", "head": "127.0.0.2", "dashboard": jupyter_server.port}))
    proc = subprocess.Popen([sys.executable, "-m", "gcpdl", "jupyter", "c", "--json", "--no-browser"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        text = ""
        while not text.rstrip().endswith("}"):
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            text += line
        data = _json.loads(text)
        assert data["name"] == "c-0" and data["cluster"] == "c"
        r = requests.get(data["ray_dashboard"] + "api/status", headers={"Authorization": f"token {jupyter_server.token}"},
                         timeout=10)
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        note.unlink(missing_ok=True)
    assert "Ray's dashboard is at http://127.0.0.1:" in err and "Traceback" not in err


def test_up_waits_for_every_node_and_each_gets_an_ssh_entry(ssh_cluster, jupyter_server):
    """`up c --nodes 3` on the running cluster: the ready step (startup, verified SSH, Jupyter,
    ~/.ssh config) for every node, in parallel; then `ssh c-1` is a host like any VM."""
    import json as _json

    from click.testing import CliRunner

    from gcpdl.cli.app import cli
    from gcpdl.ssh.sshconfig import managed_path

    for k in range(3):
        ssh_cluster.gcp.set_guest_attributes("us-central1-a", f"c-{k}", "gcpdl", {"stage": "ready"})
    r = CliRunner().invoke(cli, ["up", "c", "--nodes", "3", "--yes", "--json"], env={"GCPDL_MY_IP": "203.0.113.7", "GCPDL_ZONE": "us-central1-a"})
    assert r.exit_code == 0, r.output
    out = _json.loads(r.stdout)
    assert out["action"] == "reused" and [x["name"] for x in out["ready"]] == ["c-0", "c-1", "c-2"]
    text = managed_path().read_text()
    assert all(f"Host c-{k}\n" in text for k in range(3)), text


def test_ready_steps_in_parallel_lose_no_ssh_entry_or_pinned_key():
    """A cluster's nodes get ready on threads of one process: each writes its ~/.ssh config block
    and pins its host keys (read, change, write the whole file): none may undo another's."""
    import threading

    from gcpdl.ssh.hostkeys import HostKey, read_known
    from gcpdl.ssh.sshconfig import has_host, refresh_host

    names = [f"n-{k}" for k in range(16)]
    key = HostKey("ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIDQ5w7oNyQm0Zx2m1b1ZKZtJp0mC5hH0yTQp4QGJ2x6a")
    start = threading.Barrier(len(names))

    def one(k: int) -> None:
        start.wait()
        refresh_host(names[k], f"203.0.113.{k + 1}", 9000 + k, host_keys=[key])

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [n for n in names if not has_host(n)] == []
    assert [k for k in range(len(names)) if not read_known(f"gcpdl-{9000 + k}")] == []


def test_a_node_timeout_after_the_address_changed_points_at_the_clusters_rule(gcp, monkeypatch):
    """`ssh c-1` timing out from a new address: the hint names the cluster's rule (a node has none
    of its own) and the command that re-points it."""
    import socket

    # a port whose backlog is full: connects time out, like packets a firewall drops
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname())
    try:
        for k in range(2):
            labels = {"gcpdl": "managed", "gcpdl-cluster": "c", "gcpdl-node": str(k), "gcpdl-nodes": "2"}
            gcp.add_instance(f"c-{k}", labels=labels, nat_ip="127.0.0.1", tags=["gcpdl-c"])
        with gcp._lock:
            body = {"name": "gcpdl-ssh-c", "network": "global/networks/default", "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}],
                    "sourceRanges": ["203.0.113.7/32"], "targetTags": ["gcpdl-c"]}
            gcp.firewalls_by_name["gcpdl-ssh-c"] = gcp._firewall_body(gcp.project, "gcpdl-ssh-c", body)
        monkeypatch.setenv("GCPDL_MY_IP", "198.51.100.9")
        monkeypatch.setenv("GCPDL_SSH_PORT", str(listener.getsockname()[1]))
        monkeypatch.setenv("GCPDL_SSH_WAIT", "1")
        result = run("ssh", "c-1", "--", "true")
    finally:
        filler.close()
        listener.close()
    assert result.exit_code != 0
    assert ("Your address changed: the SSH firewall rule gcpdl-ssh-c allows 203.0.113.7/32, and you are now at "
            "198.51.100.9.") in result.stderr, result.stderr
    assert "Re-point the rule with: gcpdl start c-1 (or gcpdl up c-1)" in result.stderr
