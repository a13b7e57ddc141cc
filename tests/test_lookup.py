"""Issue 8 §4: every command finds a VM wherever it is (gcpdl/compute/lookup.py).

`up` fails over from the configured zone (us-central1-a) to us-central1-f on a stockout; `ssh`,
`jupyter` and `sync --on` must still find it, through the cache and without it. The VM's sshd
is the real sshd fixture, its Jupyter the real jupyter server."""

from __future__ import annotations

import json
import os
import stat
import sys

import pytest
from click.testing import CliRunner

from gcpdl.cli.app import cli
from gcpdl.compute import lookup
from tests.helpers import ZONE, run

OTHER = "us-central1-f"


@pytest.fixture
def lab(env, sshd, monkeypatch):
    """VM `lab`, created by `up` in us-central1-f after a stockout in the configured zone."""
    from gcpdl.ssh.keys import ensure_keypair

    sshd.authorize(ensure_keypair().public_line)
    monkeypatch.setenv("GCPDL_SSH_PORT", str(sshd.port))
    monkeypatch.setenv("GCPDL_SSH_USER", sshd.user)
    monkeypatch.setenv("GCPDL_SSH_WAIT", "10")
    env.stockout(ZONE, zones_available=[OTHER])
    r = run("up", "lab", "--gpu", "t4", "--yes", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["zone"] == OTHER
    env.set_guest_attributes(OTHER, "lab", "hostkeys", dict(sshd.host_public_keys))
    return env


def _cache() -> dict:
    return json.loads((lookup.cache_dir() / lookup.CACHE_FILE).read_text())["projects"]


def _compute():
    from gcpdl.clients import ClientFactory
    from gcpdl.compute.adapter import Compute
    from gcpdl.settings import resolve

    factory = ClientFactory(resolve())
    return Compute(factory, factory.project())


def test_up_records_where_the_vm_landed(lab):
    inst = lab.instance(OTHER, "lab")
    assert _cache() == {"test-project": {"lab": {"zone": OTHER, "id": inst["id"]}}}


@pytest.mark.parametrize("cached", [True, False])
def test_ssh_finds_the_vm_outside_the_configured_zone(lab, cached):
    if not cached:
        (lookup.cache_dir() / lookup.CACHE_FILE).unlink(missing_ok=True)
    r = run("ssh", "lab", "--", "echo hello")
    assert r.exit_code == 0, r.output
    assert r.stdout == "hello\n"
    assert _cache()["test-project"]["lab"]["zone"] == OTHER  # the fallback wrote it back


def test_the_fix_printed_for_a_failed_startup_works(lab):
    """ready.py tells the user to read the log with `gcpdl ssh NAME -- ...`: it must reach the VM."""
    import shlex

    from gcpdl.clients import ClientFactory
    from gcpdl.deadline import Deadline
    from gcpdl.settings import resolve
    from gcpdl.ssh.ready import StartupFailed, wait_startup

    lab.set_guest_attributes(OTHER, "lab", "gcpdl", {"stage": "driver", "error": "driver install failed"})
    with pytest.raises(StartupFailed) as e:
        wait_startup(ClientFactory(resolve()), "lab", OTHER, Deadline(30), lambda _: None)
    argv = shlex.split(e.value.fix.removeprefix("Full log: "))
    assert argv[:4] == ["gcpdl", "ssh", "lab", "--"]
    r = run(*argv[1:4], "echo log")  # journalctl stands in for nothing on the test sshd
    assert r.exit_code == 0, r.output


def test_an_explicit_zone_still_narrows_the_search(lab):
    r = run("ssh", "lab", "--zone", ZONE, "--", "true")
    assert r.exit_code == 1
    assert r.stderr == f"Error: No VM named lab in zone {ZONE} of project test-project. See your VMs with: gcpdl status\n"
    assert run("ssh", "lab", "--zone", OTHER, "--", "true").exit_code == 0


def test_jupyter_finds_the_vm_outside_the_configured_zone(lab, jupyter_server):
    import signal
    import subprocess

    proc = subprocess.Popen([sys.executable, "-m", "gcpdl", "jupyter", "lab", "--no-browser"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        url = proc.stdout.readline().strip()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert url.endswith(f"/?token={jupyter_server.token}"), err
    assert proc.returncode == 0, err


def test_sync_on_finds_the_vm_outside_the_configured_zone(lab, gcs, tmp_path, monkeypatch):
    monkeypatch.setenv("GCPDL_REMOTE_PYTHON", sys.executable)
    monkeypatch.setenv("GCPDL_REMOTE_DIR", str(tmp_path / "vm-gcpdl"))
    gcs.create_bucket("vmdata", public=True)
    gcs.put("vmdata", "d/a", b"on the vm")
    dest = tmp_path / "vm-disk"
    r = CliRunner().invoke(cli, ["sync", "gs://vmdata/d", str(dest), "--on", "lab", "--json"])
    assert r.exit_code == 0, r.stderr
    assert (dest / "a").read_bytes() == b"on the vm"


def test_the_cached_path_costs_one_get(lab):
    from gcpdl.deadline import Deadline

    lab.requests.clear()
    data = lookup.locate(_compute(), "lab", Deadline(30))
    assert data["zone"].endswith(f"/zones/{OTHER}")
    assert [(r.method, r.path) for r in lab.requests] == [
        ("GET", f"/compute/v1/projects/test-project/zones/{OTHER}/instances/lab")]


@pytest.mark.parametrize("elsewhere", ["us-east1-c", OTHER])
def test_a_stale_entry_is_corrected(lab, elsewhere):
    """The VM was deleted and re-created (elsewhere, or in the same zone: a new instance id)."""
    with lab._lock:
        del lab.instances_by_key[(OTHER, "lab")]
    fresh = lab.add_instance("lab", zone=elsewhere, labels={"gcpdl": "managed"})
    lab.requests.clear()
    r = run("stop", "lab", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["zone"] == elsewhere
    assert lab.instance(elsewhere, "lab")["status"] == "TERMINATED"
    assert _cache()["test-project"]["lab"] == {"zone": elsewhere, "id": fresh["id"]}
    # one GET in the cached zone (404 or another id there), then one aggregated list
    assert lab.requests[0].path == f"/compute/v1/projects/test-project/zones/{OTHER}/instances/lab"
    assert len(lab.calls("compute.instances.aggregatedList")) == 1


def test_down_forgets_and_start_status_remember(lab):
    assert run("down", "lab", "--yes").exit_code == 0
    assert _cache() == {"test-project": {}}
    lab.add_instance("lab", zone="us-east1-d", status="TERMINATED", labels={"gcpdl": "managed"})
    assert run("status", "--json").exit_code == 0
    assert _cache()["test-project"]["lab"]["zone"] == "us-east1-d"
    lab.requests.clear()
    assert run("start", "lab").exit_code == 0
    assert lab.calls("compute.instances.aggregatedList") == []  # status's entry was used


def test_a_gone_vm_is_forgotten(lab):
    with lab._lock:
        del lab.instances_by_key[(OTHER, "lab")]
    r = run("ssh", "lab", "--", "true")
    assert r.stderr == "Error: No VM named lab in project test-project. See your VMs with: gcpdl status\n"
    assert _cache() == {"test-project": {}}


def test_cache_modes_whatever_the_umask(gcp, tmp_path, monkeypatch):
    from gcpdl.compute.model import Instance

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "fresh" / "cache"))
    old = os.umask(0)
    try:
        lookup.VmCache().remember("p", [Instance("lab", OTHER, "RUNNING", "n1-standard-8", None, 0, False, instance_id="7")])
    finally:
        os.umask(old)
    folder = lookup.cache_dir()
    assert folder == tmp_path / "fresh" / "cache" / "gcpdl"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700  # created by gcpdl: private too
    assert stat.S_IMODE((folder / lookup.CACHE_FILE).stat().st_mode) == 0o600
    assert [p.name for p in folder.iterdir()] == [lookup.CACHE_FILE]  # no temp file left
    assert lookup.VmCache().get("p", "lab") == (OTHER, "7")


def test_a_corrupt_cache_is_only_slower(lab):
    (lookup.cache_dir() / lookup.CACHE_FILE).write_text("{not json")
    assert run("ssh", "lab", "--", "true").exit_code == 0
    assert _cache()["test-project"]["lab"]["zone"] == OTHER


def test_same_name_in_two_zones(lab):
    """Names are unique per zone only: gcpdl acts on the VM it made, and never guesses between two."""
    lab.add_instance("lab", zone="us-east1-d", labels={})  # made outside gcpdl
    (lookup.cache_dir() / lookup.CACHE_FILE).unlink()
    r = run("stop", "lab", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["zone"] == OTHER
    lab.add_instance("lab", zone="europe-west4-a", labels={"gcpdl": "managed"})
    (lookup.cache_dir() / lookup.CACHE_FILE).unlink()
    r = run("down", "lab", "--yes")
    assert r.exit_code == 2
    assert r.stderr == ("Error: There are VMs named lab in several zones (europe-west4-a, us-central1-f, us-east1-d); "
                        "gcpdl cannot tell which one you mean. Pass --zone (ssh, jupyter, sync), or rename one of them.\n")
    r = run("ssh", "lab", "--zone", OTHER, "--", "true")
    assert r.stderr == "Error: VM lab is stopped, not running. Start it with: gcpdl start lab\n"
