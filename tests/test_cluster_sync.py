"""`gcpdl sync gs://... --on CLUSTER`: every node fills itself from GCS at once (real sshd nodes,
the GCS stand-in, the real engine shipped as a wheel). Each node's commands run in its own
folder (tests/fixtures/cluster.py), so a relative DEST is a different disk per node."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from gcpdl.cli.app import cli
from gcpdl.cluster.sync import Combined, parse_progress


@pytest.fixture
def nodes(ssh_cluster, gcs, tmp_path, monkeypatch):
    monkeypatch.setenv("GCPDL_REMOTE_PYTHON", sys.executable)
    monkeypatch.delenv("GCPDL_REMOTE_DIR", raising=False)  # each node's own home: gcpdl ships to each, as to VMs
    return ssh_cluster


def test_sync_on_a_cluster_fills_every_node(nodes, gcs):
    gcs.create_bucket("cdata", public=True)
    names = gcs.generate("cdata", "train/", count=40, size=3000, seed=5)
    r = CliRunner().invoke(cli, ["sync", "gs://cdata/train", "train", "--on", "c", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert sorted(s["vm"] for s in out["nodes"]) == ["c-0", "c-1", "c-2"]
    assert out["files"] == 3 * 40 and out["failed"] == 0
    for sshd in nodes.sshds:
        dest = sshd.home / "train"
        for n in names[::7]:
            assert (dest / n[len("train/"):]).read_bytes() == gcs.object_bytes("cdata", n)
    assert "on each of the 3 nodes of c" in r.stderr
    assert all(list((sshd.home / ".gcpdl" / "wheels").iterdir()) for sshd in nodes.sshds)
    # the last combined line: every node done
    assert "3 nodes (3 done): 120/120 files" in r.stderr


def test_a_failing_node_fails_the_sync_with_its_name(nodes, gcs):
    r = CliRunner().invoke(cli, ["sync", "gs://no-such-bucket/d", "x", "--on", "c"])
    assert r.exit_code == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: On node c-0: Bucket gs://no-such-bucket does not exist")
    assert "On node c-2:" in last


def test_progress_lines_are_summed():
    c = Combined(["a", "b"])
    c.update("a", parse_progress("12/100+ files, 1.5 MB/3.0 MB, 5 files/s, 1.0 MB/s, ETA 3s (0 up to date)"))
    c.update("b", parse_progress("3/10 files, 0.5 MB/1.0 MB, 1 files/s, 0.5 MB/s (2 up to date)"))
    assert c.line() == "2 nodes (0 done): 15/110+ files, 2.0/4.0 MB, 1.5 MB/s together"
    assert parse_progress("Shipping gcpdl to the VM (300 KB)...") is None
