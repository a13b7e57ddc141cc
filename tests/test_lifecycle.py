"""`gcpdl stop / start / down` against the fake Compute Engine."""

from __future__ import annotations

import json



from tests.helpers import ZONE, run




def runlog(fake, zone=ZONE, name="box") -> list[str]:
    items = {i["key"]: i["value"] for i in fake.instance(zone, name)["metadata"].get("items", [])}
    return items.get("gcpdl-runlog", "").splitlines()


def test_stop_then_start_keeps_a_run_log(env):
    assert run("up", "box", "--gpu", "t4", "--yes").exit_code == 0
    result = run("stop", "box", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"name": "box", "zone": ZONE, "state": "TERMINATED", "external_ip": "127.0.0.1",
                                         "machine_type": "n1-standard-8", "gpu": "t4", "gpu_count": 1, "spot": False}
    assert [line.split()[0] for line in runlog(env)] == ["start", "stop"]
    result = run("start", "box")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("box in us-central1-a: RUNNING")
    assert [line.split()[0] for line in runlog(env)] == ["start", "stop", "start"]
    stamps = [int(line.split()[1]) for line in runlog(env)]
    assert stamps == sorted(stamps)


def test_stop_is_idempotent_and_start_on_running_does_nothing(env):
    env.add_instance("box", status="TERMINATED", labels={"gcpdl": "managed"})
    assert run("stop", "box").exit_code == 0
    assert env.calls("compute.instances.stop") == []
    env.add_instance("run", labels={"gcpdl": "managed"})
    assert run("start", "run").exit_code == 0
    assert env.calls("compute.instances.start") == []


def test_runlog_keeps_the_last_200_lines(env):
    long_log = "\n".join(f"start {i}\nstop {i + 1}" for i in range(0, 400, 2))
    env.add_instance("box", labels={"gcpdl": "managed"}, metadata={"enable-guest-attributes": "TRUE", "gcpdl-runlog": long_log})
    assert run("stop", "box").exit_code == 0
    lines = runlog(env)
    # the last 200 lines, less a leading stop whose start was cut off
    assert len(lines) == 199 and lines[-1].startswith("stop ") and lines[0] == "start 202"


def test_unknown_vm(env):
    result = run("stop", "ghost")
    assert result.exit_code == 1
    assert result.stderr == "Error: No VM named ghost in project test-project. See your VMs with: gcpdl status\n"


def test_invalid_name_checked_before_any_call(env):
    result = run("down", "Ghost", "--yes")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: Invalid VM name 'Ghost'")
    assert env.requests == []


def test_down_deletes_vm_boot_disk_and_rule_but_keeps_data(env):
    assert run("up", "box", "--gpu", "t4", "--yes", "--data-disk", "100").exit_code == 0
    result = run("down", "box", "--yes")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "Deleted instance box, boot disk box, firewall rule gcpdl-ssh-box, firewall rule gcpdl-deny-ssh-box.",
        "Kept data disk box-data (gcpdl down box --delete-data removes it).",
    ]
    assert env.instances() == [] and env.firewalls() == []
    assert [d["name"] for d in env.disks()] == ["box-data"]
    # the kept disk still bills: say how much
    from gcpdl.pricing import data_disk_reminder

    dtype = env.disks()[0]["type"].rsplit("/", 1)[-1]
    assert data_disk_reminder(100, dtype, "us-central1") in result.stderr


def test_down_delete_data(env):
    assert run("up", "box", "--gpu", "t4", "--yes", "--data-disk", "100").exit_code == 0
    result = run("down", "box", "--yes", "--delete-data", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["deleted"][-1] == "data disk box-data"
    assert env.disks() == [] and env.instances() == []


def test_down_asks_and_no_keeps_everything(env):
    assert run("up", "box", "--gpu", "t4", "--yes").exit_code == 0
    result = run("down", "box", input="n\n")
    assert result.exit_code == 1
    assert "Delete box in us-central1-a? This cannot be undone." in result.stderr
    assert result.stderr.splitlines()[-1] == "Error: Nothing deleted."
    assert env.instance(ZONE, "box") is not None and len(env.firewalls()) == 2


def test_down_retries_a_503_on_delete(env):
    assert run("up", "box", "--gpu", "t4", "--yes").exit_code == 0
    env.fail_next(503, times=2, method="DELETE", path="/instances/box$")
    result = run("down", "box", "--yes")
    assert result.exit_code == 0, result.output
    assert len(env.calls("compute.instances.delete")) == 3
    assert env.instances() == []


def test_operation_error_surfaces_its_code(env):
    """A stop that ends in error (without httpErrorStatusCode) is reported, not swallowed."""
    from gcpdl.compute import adapter
    from gcpdl.errors import OperationFailed

    op = {"name": "op-1", "status": "DONE", "zone": "zones/us-central1-a",
          "error": {"errors": [{"code": "RESOURCE_OPERATION_RATE_EXCEEDED", "message": "Too many operations on box."}]}}
    err = adapter.operation_error(op, "test-project", "Stopping box")
    assert isinstance(err, OperationFailed)
    assert err.code == "RESOURCE_OPERATION_RATE_EXCEEDED"
    assert str(err) == "Stopping box failed with RESOURCE_OPERATION_RATE_EXCEEDED: Too many operations on box."


def test_down_removes_the_ssh_config_entry(env):
    from gcpdl.ssh.sshconfig import has_host, refresh_host

    assert run("up", "box", "--gpu", "t4", "--yes").exit_code == 0
    refresh_host("box", "127.0.0.1", "12345", user="gcpdl", port=22)
    assert has_host("box")
    result = run("down", "box", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert "ssh config entry box" in json.loads(result.stdout)["deleted"]
    assert not has_host("box")


def test_runlog_survives_a_concurrent_metadata_change(env):
    """Our metadata read is stale (the agent wrote since): 412, re-read, retry, nothing lost."""
    from gcpdl.clients import ClientFactory
    from gcpdl.compute import lifecycle
    from gcpdl.compute.adapter import Compute
    from gcpdl.deadline import Deadline
    from gcpdl.settings import resolve

    env.add_instance("box", labels={"gcpdl": "managed"},
                     metadata={"enable-guest-attributes": "TRUE", "gcpdl-runlog": "start 100"})
    factory = ClientFactory(resolve())
    compute = Compute(factory, factory.project())
    stale = lifecycle.require(compute, "box", Deadline(30))
    with env._lock:  # someone else's setMetadata: new item, new fingerprint
        md = env.instances_by_key[(ZONE, "box")]["metadata"]
        md["items"].append({"key": "gcpdl-autostop", "value": "30"})
        md["fingerprint"] = "changed=="
    op = lifecycle._append_runlog(compute, stale, "stop", 200.0, Deadline(30))
    compute.wait(op, Deadline(30))
    items = {i["key"]: i["value"] for i in env.instance(ZONE, "box")["metadata"]["items"]}
    assert items["gcpdl-runlog"] == "start 100\nstop 200"
    assert items["gcpdl-autostop"] == "30"
    assert len(env.calls("compute.instances.setMetadata")) == 2


def test_down_after_the_vm_vanished_removes_its_leftovers(env):
    assert run("up", "box", "--gpu", "t4", "--yes", "--data-disk", "100").exit_code == 0
    with env._lock:  # deleted in the console: the rule and the data disk stay behind
        env.instances_by_key.pop((ZONE, "box"))
        env.disks_by_key.pop((ZONE, "box"))
        env.disks_by_key[(ZONE, "box-data")].pop("users", None)
    result = run("down", "box", "--yes")
    assert result.exit_code == 0, result.output
    assert "No VM named box; removing what is left of it." in result.stderr
    assert result.stdout.splitlines() == [
        "Deleted firewall rule gcpdl-ssh-box, firewall rule gcpdl-deny-ssh-box.",
        "Kept data disk box-data (gcpdl down box --delete-data removes it).",
    ]
    assert env.firewalls() == [] and [d["name"] for d in env.disks()] == ["box-data"]
    result = run("down", "box", "--yes", "--delete-data")
    assert result.exit_code == 0 and env.disks() == []
    assert run("down", "box", "--yes").exit_code == 1
