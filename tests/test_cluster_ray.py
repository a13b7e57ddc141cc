"""Ray on a cluster: a real Ray cluster (PyPI `ray`, one CPU per node) started across the sshd
"nodes" by the same code path as on GCE (Ray's CLI over SSH: head on node 0, workers joining),
then `gcpdl ray NAME -- python job.py` through Ray's job API over the SSH tunnel, with a task on
every node. Ray is the heaviest part of the suite: one cluster, started once, for every check."""

from __future__ import annotations

import os
import signal
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from gcpdl.cli.app import cli
from tests.fixtures.ports import free_port

pytest.importorskip("ray")

JOB = '''
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init()
nodes = [n for n in ray.nodes() if n["Alive"]]

@ray.remote(num_cpus=1)
def where():
    return ray.util.get_node_ip_address()

pinned = [where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote() for n in nodes]
print("ran on", sorted(ray.get(pinned)))
'''


def _kill_tree_of(temp_dir: str) -> None:
    """End this test's Ray processes (and only them): those whose command line names its session folder."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if temp_dir.encode() in cmd:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_ray_cluster_across_the_nodes_runs_a_job_on_every_node(ssh_cluster, ray_host_lock, tmp_path, monkeypatch):
    from gcpdl.clients import ClientFactory
    from gcpdl.cluster import ray as core
    from gcpdl.cluster.nodes import running_cluster
    from gcpdl.settings import resolve
    from gcpdl.ssh.session import target_session

    from tests.fixtures.cluster import seed_cluster

    monkeypatch.setenv("GCPDL_REMOTE_PYTHON", sys.executable)
    # two nodes: a head and a worker (three raylets on this shared two-core machine is more load
    # than the suite should carry; the code path is the same for any N)
    seed_cluster(ssh_cluster.gcp, ssh_cluster.sshds[:2], name="r")
    factory = ClientFactory(resolve())
    found = running_cluster(factory, "r")
    sessions = [target_session(factory, n.name, n.zone) for n in found.nodes]
    temp_dir = f"/tmp/gcpdl-ray-{uuid.uuid4().hex[:8]}"
    base = free_port()
    ports = core.RayPorts(gcs=free_port(), dashboard=free_port(), agent=base, temp_dir=temp_dir)
    try:
        said: list[str] = []
        st = core.start(found, sessions, ports, num_cpus=1, progress=said.append, python=sys.executable)
        assert st["head"] == "127.0.0.2" and st["version"] == core.RAY_VERSION
        assert said == ["Starting the Ray head on r-0 (127.0.0.2)...", "Joining 1 worker node(s) to it..."]
        # node 0 remembers what runs (its own folder: the fixture's node home)
        assert (ssh_cluster.sshds[0].home / ".gcpdl" / "ray.json").exists()
        # `up --ray` again: Ray runs, so it is left as it is
        said.clear()
        again = core.start(found, sessions, ports, num_cpus=1, progress=said.append, python=sys.executable)
        assert said == ["Ray already runs on r (head r-0); leaving it as it is."] and again["gcs"] == ports.gcs

        work = tmp_path / "job"
        work.mkdir()
        (work / "job.py").write_text(JOB)
        r = CliRunner().invoke(cli, ["ray", "r", "--working-dir", str(work), "--", "python", "job.py"])
        assert r.exit_code == 0, r.output
        assert "ran on ['127.0.0.2', '127.0.0.3']" in r.stdout
        assert "Submitted Ray job" in r.stderr

        (work / "fail.py").write_text("import sys; print('bad input'); sys.exit(3)\n")
        r = CliRunner().invoke(cli, ["ray", "r", "--working-dir", str(work), "--json", "--", "python", "fail.py"])
        assert r.exit_code == 3, r.output
        assert "bad input" in r.stderr
    finally:
        for s in sessions:
            s.close()
        _kill_tree_of(temp_dir)
        import shutil

        shutil.rmtree(temp_dir, ignore_errors=True)  # Ray's session folder (logs, sockets)
    # Ray is gone, its note on node 0 is not: what a stopped and restarted cluster looks like
    r = CliRunner().invoke(cli, ["ray", "r", "--", "python", "job.py"])
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines()[-1] == ("Error: Ray on cluster r does not answer (its nodes were restarted, or Ray "
                                                 "was stopped). Start it again with: gcpdl up r --nodes 2 --ray")
    (ssh_cluster.sshds[0].home / ".gcpdl" / "ray.json").unlink(missing_ok=True)


def test_ray_without_ray_says_how_to_start_it(ssh_cluster):
    (ssh_cluster.sshds[0].home / ".gcpdl" / "ray.json").unlink(missing_ok=True)
    r = CliRunner().invoke(cli, ["ray", "c", "--", "python", "job.py"])
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines()[-1] == "Error: Ray is not running on cluster c. Start it with: gcpdl up c --nodes N --ray"


def test_the_pinned_version_is_the_tested_one():
    import ray

    from gcpdl.cluster.ray import RAY_VERSION

    assert ray.__version__ == RAY_VERSION  # pyproject's test extra pins the same

