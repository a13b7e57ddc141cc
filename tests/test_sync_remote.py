"""`gcpdl sync --on VM`: gcpdl ships its own wheel over SFTP and runs the engine on the VM.

The VM is the fake-Compute instance whose sshd is the fixture sshd (tests/fixtures/ssh.py); the
bucket is the GCS stand-in. GCPDL_REMOTE_PYTHON names a Python on the "VM" that already has the
dependencies (a real VM gets a venv), GCPDL_REMOTE_DIR keeps gcpdl's folder there in tmp_path.
"""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from gcpdl.cli.app import cli


@pytest.fixture
def vm(ssh_vm, gcs, tmp_path, monkeypatch):
    monkeypatch.setenv("GCPDL_REMOTE_PYTHON", sys.executable)
    monkeypatch.setenv("GCPDL_REMOTE_DIR", str(tmp_path / "vm-gcpdl"))
    return ssh_vm


def test_sync_on_vm_ships_the_wheel_once_and_streams_the_summary(vm, gcs, tmp_path):
    gcs.create_bucket("vmdata", public=True)
    names = gcs.generate("vmdata", "train/", count=120, size=4000, seed=11)
    dest = tmp_path / "vm-disk" / "train"
    r = CliRunner().invoke(cli, ["sync", "gs://vmdata/train", str(dest), "--on", "box", "--json"])
    assert r.exit_code == 0, r.stderr
    s = json.loads(r.stdout)
    assert (s["files"], s["failed"], s["vm"]) == (120, 0, "box")
    assert "Shipping gcpdl to the VM" in r.stderr
    for n in names[::17]:
        assert (dest / n[len("train/"):]).read_bytes() == gcs.object_bytes("vmdata", n)
    wheels = list((tmp_path / "vm-gcpdl" / "wheels").iterdir())
    assert len(wheels) == 1 and wheels[0].name.startswith("gcpdl-") and wheels[0].name.endswith("-py3-none-any.whl")

    r = CliRunner().invoke(cli, ["sync", "gs://vmdata/train", str(dest), "--on", "box", "--json"])
    assert r.exit_code == 0, r.stderr
    assert "Shipping" not in r.stderr  # same gcpdl: not uploaded again
    assert json.loads(r.stdout)["skipped"] == 120


def test_the_only_running_vm_is_the_default(vm, gcs, tmp_path):
    # ssh_vm's `box` is a labelled gcpdl VM; a stopped one and an unlabelled running one do not count
    vm.gcp.add_instance("other", status="TERMINATED", labels={"gcpdl": "managed"})
    vm.gcp.add_instance("not-ours", status="RUNNING")
    gcs.create_bucket("vmdata", public=True)
    gcs.put("vmdata", "d/a", b"on the vm")
    dest = tmp_path / "vm-disk"
    r = CliRunner().invoke(cli, ["sync", "gs://vmdata/d", str(dest)])
    assert r.exit_code == 0, r.stderr
    assert f"Syncing gs://vmdata/d/ to box:{dest}" in r.stderr
    assert (dest / "a").read_bytes() == b"on the vm"


def test_several_running_vms_need_a_choice(vm, tmp_path):
    vm.gcp.add_instance("second", status="RUNNING", labels={"gcpdl": "managed"})
    r = CliRunner().invoke(cli, ["sync", "gs://vmdata/d", str(tmp_path / "x")])
    assert r.exit_code == 2
    assert r.stderr == "Error: Several gcpdl VMs are running (box, second). Pick one with --on NAME, or pass --local.\n"


def test_no_running_vm_says_what_to_do(gcp, tmp_path):
    r = CliRunner().invoke(cli, ["sync", "gs://vmdata/d", str(tmp_path / "x")])
    assert r.exit_code == 2
    assert r.stderr == "Error: No gcpdl VM is running to sync onto. Start one (gcpdl up NAME), or pass --local to sync onto this machine.\n"


def test_remote_errors_come_back_as_one_line(vm, gcs, tmp_path):
    r = CliRunner().invoke(cli, ["sync", "gs://no-such-bucket/d", str(tmp_path / "x"), "--on", "box"])
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines()[-1] == (
        "Error: On VM box: Bucket gs://no-such-bucket does not exist (or is not visible to anonymous)."
    )
    assert not (tmp_path / "x").exists()


def test_unknown_vm(vm, tmp_path):
    r = CliRunner().invoke(cli, ["sync", "gs://vmdata/d", str(tmp_path / "x"), "--on", "nope"])
    assert r.exit_code == 1
    assert r.stderr == "Error: No VM named nope in project test-project. See your VMs with: gcpdl status\n"


def test_a_wheel_of_the_right_size_but_other_bytes_is_replaced(vm, gcs, tmp_path):
    """The wheel on the VM is reused only when its SHA-256 matches what would be shipped: same
    size is not enough (a truncated-then-padded upload, or someone else's file of that name)."""
    from gcpdl.sync.remote import build_wheel

    gcs.create_bucket("vmdata", public=True)
    gcs.put("vmdata", "d/a", b"x")
    dest = tmp_path / "vm-disk"
    r = CliRunner().invoke(cli, ["sync", "gs://vmdata/d", str(dest), "--on", "box"])
    assert r.exit_code == 0, r.stderr
    (wheel,) = (tmp_path / "vm-gcpdl" / "wheels").iterdir()
    name, data = build_wheel()
    assert wheel.name == name
    wheel.write_bytes(b"\0" * len(data))  # same size, other bytes
    r = CliRunner().invoke(cli, ["sync", "gs://vmdata/d", str(dest), "--on", "box"])
    assert r.exit_code == 0, r.stderr
    assert "Shipping gcpdl to the VM" in r.stderr
    assert wheel.read_bytes() == data


def test_an_incomplete_sync_on_the_vm_exits_3_with_complete_false(vm, gcs, tmp_path):
    gcs.create_bucket("vmdata", public=True)
    gcs.put_many("vmdata", {"d/a": b"a", "d/b": b"b"})
    gcs.faults(fail_status=404, fail_count=1, fail_match="d/b", fail_kinds=["media"])  # deleted after the listing
    r = CliRunner().invoke(cli, ["sync", "gs://vmdata/d", str(tmp_path / "vm-disk"), "--on", "box", "--json"])
    assert r.exit_code == 3, r.stderr
    s = json.loads(r.stdout)
    assert (s["complete"], s["missing"], s["vm"]) == (False, 1, "box")
    assert r.stderr.strip().splitlines()[-1] == (
        "Error: On VM box: Sync incomplete: 1 of 2 objects is not in DEST (1 changed in the bucket during the sync)."
        " Re-run to fetch 1 object."
    )
