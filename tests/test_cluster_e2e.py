"""Clusters from the command line, end to end: `gcpdl up NAME --nodes 2 --ray` creates the nodes on
the fake Compute server, waits until each is ready (its startup stage, host keys and SSH on the
real sshd "nodes" of tests/fixtures/cluster.py), then starts a real Ray cluster across them with
Ray's CLI over SSH, and `gcpdl ray` runs a job that sees both nodes. And `--shared`'s mount
commands, run for real on an ext4 image in a private mount namespace."""

from __future__ import annotations

import functools
import shutil
import sys
import uuid

import pytest
from click.testing import CliRunner

from gcpdl.cli.app import cli
from gcpdl.ssh.sshconfig import has_host
from tests.fixtures.cluster import ZONE, node_address
from tests.fixtures.ports import free_port

pytest.importorskip("ray")

COUNT = '''
import ray
ray.init()
print("alive nodes:", sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]))
'''


def test_up_nodes_ray_from_the_command_line(env, ssh_cluster, ray_host_lock, tmp_path, monkeypatch):
    from gcpdl.cluster import ray as core
    from tests.test_cluster_ray import _kill_tree_of

    monkeypatch.setenv("GCPDL_REMOTE_PYTHON", sys.executable)
    gcp = ssh_cluster.gcp
    for k, sshd in enumerate(ssh_cluster.sshds[:2]):  # what node k's VM will have once it has booted
        gcp.nat_ips[f"r-{k}"] = gcp.internal_ips[f"r-{k}"] = node_address(k)
        gcp.set_guest_attributes(ZONE, f"r-{k}", "hostkeys", dict(sshd.host_public_keys))
        gcp.set_guest_attributes(ZONE, f"r-{k}", "gcpdl", {"stage": "ready"})
    # Ray's well-known ports and /tmp/ray are shared by everything on this machine: this test's
    # Ray gets free ports and a session folder of its own (the defaults are what a VM gets)
    temp_dir = f"/tmp/gcpdl-ray-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(core, "RayPorts", functools.partial(core.RayPorts, gcs=free_port(), dashboard=free_port(),
                                                            agent=free_port(), temp_dir=temp_dir))
    try:
        r = CliRunner().invoke(cli, ["up", "r", "--nodes", "2", "--gpu", "t4", "--ray", "--yes", "--zone", ZONE])
        assert r.exit_code == 0, r.output
        assert sorted(i["name"] for i in gcp.instances() if i["name"].startswith("r-")) == ["r-0", "r-1"]
        assert "waiting for SSH and Jupyter" in r.stderr and has_host("r-0") and has_host("r-1")  # the ready wait, on every node
        assert "Starting the Ray head on r-0 (127.0.0.2)..." in r.stderr
        assert "Joining 1 worker node(s) to it..." in r.stderr
        assert f"Ray {core.RAY_VERSION} runs on 2 nodes of r; submit with: gcpdl ray r -- python job.py" in r.stderr
        # the Ray that `up` started takes jobs, and both nodes are in it
        work = tmp_path / "job"
        work.mkdir()
        (work / "count.py").write_text(COUNT)
        r = CliRunner().invoke(cli, ["ray", "r", "--working-dir", str(work), "--", "python", "count.py"])
        assert r.exit_code == 0, r.output
        assert "alive nodes: ['127.0.0.2', '127.0.0.3']" in r.stdout
    finally:
        _kill_tree_of(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        (ssh_cluster.sshds[0].home / ".gcpdl" / "ray.json").unlink(missing_ok=True)


SHARED_SCRIPT = r'''
command -v sudo >/dev/null || { sudo() { "$@"; }; export -f sudo; }
step() { bash -c "$1" && echo "STEP $2 ok" || echo "STEP $2 failed"; }
step "$RW" rw
mkdir -p "$MNT/train" && echo hello > "$MNT/train/a.txt" && echo "WROTE ok"
step "$UNMOUNT" unmount
step "$RO" ro
echo "READ $(cat "$MNT/train/a.txt")"
touch "$MNT/train/b.txt" 2>/dev/null && echo "WRITE-ON-RO allowed" || echo "WRITE-ON-RO refused"
grep " $MNT " /proc/self/mounts | awk '{print "OPTIONS " $4}'
step "$RO" ro-again
step "$UNMOUNT" unmount-2
step "$RW" rw-again
echo "KEPT $(cat "$MNT/train/a.txt")"
step "$UNMOUNT" unmount-3
'''


def test_shared_disk_mount_steps_on_a_real_ext4_image(tmp_path):
    """gcpdl/cluster/shared.py's node-side commands, run for real: on a file-backed loop device in
    a private mount namespace (nothing is mounted on this machine), with the device path and the
    mount point moved under tmp_path. A blank disk gets ext4 and is writable on node 0; read-only
    mounts refuse writes; mounting again changes nothing; a second fill keeps the data."""
    import os
    import subprocess

    from gcpdl.cluster import shared

    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("mkfs.ext4") or not os.path.exists("/dev/loop-control"):
        pytest.skip("needs root, unshare, mkfs.ext4 and loop devices (/dev/loop-control)")
    image = tmp_path / "shared.img"
    with image.open("wb") as f:
        f.truncate(32 << 20)
    made = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"no loop device here: {made.stderr.strip()}")
    loop = made.stdout.strip()
    mnt = tmp_path / "mnt"
    steps = {k: v.replace(shared.DEVICE, loop).replace(shared.MOUNT_POINT, str(mnt)) for k, v in shared.STEPS.items()}
    try:
        out = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", SHARED_SCRIPT],
                             env={**os.environ, "RW": steps["rw"], "RO": steps["ro"], "UNMOUNT": steps["unmount"], "MNT": str(mnt)},
                             capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["losetup", "-d", loop], capture_output=True)
    lines = out.stdout.splitlines()
    assert [ln for ln in lines if ln.startswith("STEP")] == [
        "STEP rw ok", "STEP unmount ok", "STEP ro ok", "STEP ro-again ok", "STEP unmount-2 ok", "STEP rw-again ok", "STEP unmount-3 ok",
    ], out.stdout + out.stderr
    assert "WROTE ok" in lines and "READ hello" in lines and "KEPT hello" in lines
    assert "WRITE-ON-RO refused" in lines
    [opts] = [ln for ln in lines if ln.startswith("OPTIONS ")]
    assert opts.split()[1].split(",")[0] == "ro"
    assert not mnt.exists() or not os.path.ismount(mnt)  # nothing stayed mounted out here
