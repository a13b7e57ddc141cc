"""`--shared`: one data disk for a cluster, read-only on every node, filled once through node 0.

The fake Compute server enforces GCE's multi-attach rule (one READ_WRITE user and no one else,
or any number of READ_ONLY users). The node-side mount steps are run by ``prepare``; here a
recorder stands in for them (they need a block device: see gcpdl/cluster/shared.py)."""

from __future__ import annotations

import json

import pytest

from tests.helpers import ZONE, run


def shared_modes(fake) -> dict[str, str]:
    out = {}
    for inst in fake.instances():
        for d in inst.get("disks", []):
            if d["source"].endswith("/disks/c-shared"):
                out[inst["name"]] = d["mode"]
    return out


@pytest.fixture
def cluster(env):
    result = run("up", "c", "--nodes", "3", "--gpu", "l4", "--shared", "50", "--yes")
    assert result.exit_code == 0, result.output
    assert "c-shared is attached read-only to every node" in result.stderr
    return env


def _compute():
    from tests.test_up import _compute as c

    return c()


def test_up_shared_attaches_one_disk_read_only_everywhere(cluster):
    assert shared_modes(cluster) == {"c-0": "READ_ONLY", "c-1": "READ_ONLY", "c-2": "READ_ONLY"}
    [disk] = [d for d in cluster.disks() if d["name"] == "c-shared"]
    assert disk["sizeGb"] == "50" and len(disk["users"]) == 3
    # up again: nothing attached twice
    assert run("up", "c", "--nodes", "3", "--shared", "50", "--yes").exit_code == 0
    assert len(cluster.calls("compute.instances.attachDisk")) == 3


def test_the_fake_refuses_a_writer_beside_readers(cluster):
    from gcpdl.compute import requests as rq
    from gcpdl.deadline import Deadline
    from gcpdl.errors import GcpdlError

    compute = _compute()
    compute.clients_for(["instances.attachDisk", "instances.detachDisk"])
    d = Deadline(30)
    compute.run(rq.detach_disk(cluster.project, ZONE, "c-0"), d)
    with pytest.raises(GcpdlError, match="already being used"):
        compute.run(rq.attach_disk(cluster.project, ZONE, "c-0", "c-shared", read_only=False), d)


def test_fill_takes_it_off_every_node_writes_on_node_0_then_all_read(cluster):
    from gcpdl.compute import cluster as cl

    steps: list[tuple[str, list[str]]] = []
    during: dict[str, str] = {}

    def prepare(nodes, step):
        steps.append((step, sorted(n.name for n in nodes)))

    def fill(head):
        during.update(shared_modes(cluster))
        return head.name

    assert cl.fill_shared(_compute(), "c", fill, prepare) == "c-0"
    assert during == {"c-0": "READ_WRITE"}  # nobody reads while node 0 writes
    assert shared_modes(cluster) == {"c-0": "READ_ONLY", "c-1": "READ_ONLY", "c-2": "READ_ONLY"}
    assert steps == [("unmount", ["c-0", "c-1", "c-2"]), ("rw", ["c-0"]), ("unmount", ["c-0"]), ("ro", ["c-0", "c-1", "c-2"])]


def test_a_failed_fill_still_leaves_every_node_reading(cluster):
    from gcpdl.compute import cluster as cl
    from gcpdl.errors import SyncError

    def fill(head):
        raise SyncError("bucket gone")

    with pytest.raises(SyncError):
        cl.fill_shared(_compute(), "c", fill, lambda nodes, step: None)
    assert shared_modes(cluster) == {"c-0": "READ_ONLY", "c-1": "READ_ONLY", "c-2": "READ_ONLY"}


def test_shared_needs_nodes_and_sync_shared_needs_on(env):
    result = run("up", "c", "--shared", "50", "--yes")
    assert result.exit_code == 2 and "--shared is for a cluster: add --nodes N." in result.stderr
    result = run("up", "c", "--nodes", "2", "--shared", "5", "--yes")
    assert result.exit_code == 2 and "10 to 65536 GB" in result.stderr
    result = run("sync", "gs://my-bucket/p", "--shared")
    assert result.exit_code == 2 and "add --on CLUSTER" in result.stderr
    assert env.requests == []


def test_down_keeps_no_shared_disk_attached(cluster):
    result = run("down", "c", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert cluster.instances() == []
    [disk] = [d for d in cluster.disks() if d["name"] == "c-shared"]
    assert "users" not in disk  # detached with its nodes, kept: like NAME-data, a dataset outlives down
    assert "data disk c-shared" in json.loads(result.stdout)["kept"]


def test_down_delete_data_removes_the_shared_disk(cluster):
    result = run("down", "c", "--yes", "--delete-data", "--json")
    assert result.exit_code == 0, result.output
    assert "data disk c-shared" in json.loads(result.stdout)["deleted"]
    assert [d for d in cluster.disks() if d["name"] == "c-shared"] == []
