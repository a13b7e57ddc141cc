"""`gcpdl up` against the fake Compute Engine, through the real google-cloud-compute client."""

from __future__ import annotations

import json
from functools import partial

import pytest


from tests.helpers import ZONE, run




def bodies(fake, method_id: str) -> list[dict]:
    return [r.body for r in fake.calls(method_id)]


def mutations(fake) -> list[str]:
    return [r.method_id for r in fake.requests if r.method in ("POST", "PATCH", "DELETE") and not r.method_id.endswith(".wait")]


def _compute(**deadline_kw):
    from gcpdl.clients import ClientFactory
    from gcpdl.compute.adapter import Compute
    from gcpdl.deadline import Deadline
    from gcpdl.settings import resolve

    factory = ClientFactory(resolve())
    return Compute(factory, factory.project(), partial(Deadline, **deadline_kw) if deadline_kw else Deadline)


def test_real_run_sends_exactly_the_dry_run_bodies(env):
    """The plan the dry-run prints is what the fake receives, field for field."""
    from gcpdl.compute import lifecycle
    from gcpdl.spec import build_spec

    spec = build_spec("box", gpu="t4", spot=True, data_disk="200", max_hours=4)
    now = lambda: 1_790_000_000.0  # noqa: E731
    plan = lifecycle.plan(env.project, ZONE, spec, "203.0.113.7/32", now=now)
    ctx = lifecycle.UpContext(compute=_compute(), zones=[ZONE], ssh_from="203.0.113.7/32", now=now)
    result = lifecycle.up(ctx, spec)
    assert result.action == "created"
    sent = {
        "firewalls.insert": bodies(env, "compute.firewalls.insert"),
        "disks.insert": bodies(env, "compute.disks.insert"),
        "instances.insert": bodies(env, "compute.instances.insert"),
    }
    for kind in sent:
        # two firewall inserts (the SSH allow rule and the deny rule for everyone else)
        assert sorted(json.dumps(b, sort_keys=True) for b in sent[kind]) == \
            sorted(json.dumps(c.body, sort_keys=True) for c in plan.requests if c.kind == kind), kind
        assert sorted(r.path for r in env.calls("compute." + kind)) == sorted(c.path for c in plan.requests if c.kind == kind)


def test_cli_up_matches_cli_dry_run(env):
    dry = run("up", "box", "--gpu", "l4", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    planned = json.loads(dry.stdout)["requests"]
    result = run("up", "box", "--gpu", "l4", "--yes", "--json")
    assert result.exit_code == 0, result.output
    sent = [(r.method, r.path, r.body) for r in env.requests if r.method_id in ("compute.firewalls.insert", "compute.instances.insert")]

    def strip_runlog(body):
        body = json.loads(json.dumps(body))
        for item in body.get("metadata", {}).get("items", []):
            if item["key"] == "gcpdl-runlog":
                assert item["value"].startswith("start ")
                item["value"] = "start T"
        return body

    # the rule and the VM go out side by side, in either order
    assert sorted(((p["method"], p["path"], strip_runlog(p["body"])) for p in planned), key=str) == \
        sorted(((m, p, strip_runlog(b)) for m, p, b in sent), key=str)
    out = json.loads(result.stdout)
    assert out["name"] == "box" and out["zone"] == ZONE and out["action"] == "created"
    assert out["gpu"] == "l4" and out["external_ip"] == "127.0.0.1" and out["price_per_hour"] > 0
    inst = env.instance(ZONE, "box")
    assert inst["status"] == "RUNNING"
    assert inst["labels"] == {"gcpdl": "managed", "gcpdl-gpu": "l4", "gcpdl-gpu-count": "1", "gcpdl-spot": "false"}
    rule, deny = (env.firewalls_by_name[n] for n in ("gcpdl-ssh-box", "gcpdl-deny-ssh-box"))
    assert deny["denied"] == [{"IPProtocol": "tcp", "ports": ["22"]}] and deny["targetTags"] == ["gcpdl-box"]
    assert rule["sourceRanges"] == ["203.0.113.7/32"] and rule["targetTags"] == ["gcpdl-box"]
    assert rule["allowed"] == [{"IPProtocol": "tcp", "ports": ["22"]}]


def test_human_output_and_happy_path_call_count(env):
    result = run("up", "box", "--gpu", "t4", "--yes")
    assert result.exit_code == 0, result.output
    assert "Created box in us-central1-a" in result.stdout
    assert "127.0.0.1" in result.stdout and "$" in result.stdout
    assert "Creating box in us-central1-a..." in result.stderr
    # pre-flight reads (7, plus 2 for GPU quota, in parallel) + deny rule insert/wait, then the allow rule beside the
    # instance (insert/wait each) + get
    assert sorted(mutations(env)) == ["compute.firewalls.insert", "compute.firewalls.insert", "compute.instances.insert"]
    assert mutations(env)[0] == "compute.firewalls.insert"  # the deny rule, before the instance
    assert len(env.requests) <= 16


def test_up_on_running_vm_reuses_it(env):
    assert run("up", "box", "--gpu", "t4", "--yes").exit_code == 0
    before = len(env.calls("compute.instances.insert"))
    result = run("up", "box", "--gpu", "t4", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["action"] == "reused"
    assert len(env.calls("compute.instances.insert")) == before == 1
    assert "box is already running in us-central1-a." in result.stderr


def test_up_finds_the_vm_in_another_zone_never_a_duplicate(env):
    env.add_instance("box", zone="us-central1-b", labels={"gcpdl": "managed"}, machine_type="n1-standard-8")
    result = run("up", "box", "--gpu", "t4", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["zone"] == "us-central1-b"
    assert env.calls("compute.instances.insert") == []
    assert env.instance(ZONE, "box") is None


def test_up_on_stopped_vm_starts_it_and_reports_differences(env):
    env.add_instance("box", status="TERMINATED", labels={"gcpdl": "managed"}, machine_type="n1-standard-4",
                     metadata={"enable-guest-attributes": "TRUE", "gcpdl-runlog": "start 100\nstop 200"})
    result = run("up", "box", "--gpu", "t4", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["action"] == "started"
    assert "Warning: box differs from what you asked for: machine type is n1-standard-4, not n1-standard-8." in result.stderr
    inst = env.instance(ZONE, "box")
    assert inst["status"] == "RUNNING"
    runlog = {i["key"]: i["value"] for i in inst["metadata"]["items"]}["gcpdl-runlog"].splitlines()
    assert runlog[:2] == ["start 100", "stop 200"] and runlog[2].startswith("start ")
    # the run-log update went out before the start request
    order = [r.method_id for r in env.requests if r.method_id in ("compute.instances.setMetadata", "compute.instances.start")]
    assert order == ["compute.instances.setMetadata", "compute.instances.start"]


def test_up_refuses_a_vm_gcpdl_did_not_create(env):
    env.add_instance("box", labels={})
    result = run("up", "box", "--gpu", "t4", "--yes")
    assert result.exit_code == 2
    assert result.stderr == "Error: A VM named box already exists in us-central1-a and was not created by gcpdl; choose another name.\n"


def test_firewall_rule_follows_the_callers_address(env, monkeypatch):
    assert run("up", "box", "--gpu", "t4", "--yes").exit_code == 0
    monkeypatch.setenv("GCPDL_MY_IP", "198.51.100.9")
    assert run("up", "box", "--gpu", "t4", "--yes").exit_code == 0
    rule = env.firewalls_by_name["gcpdl-ssh-box"]
    assert rule["sourceRanges"] == ["198.51.100.9/32"]
    assert [r.body["sourceRanges"] for r in env.calls("compute.firewalls.patch")] == [["198.51.100.9/32"]]


@pytest.mark.parametrize("code", ["ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS"])
def test_stockout_fails_over_to_zones_available_first(env, code):
    env.stockout(ZONE, code=code, zones_available=["us-central1-f"])
    result = run("up", "box", "--gpu", "t4", "--yes", "--data-disk", "100", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["zone"] == "us-central1-f"
    assert [(a["zone"], a["outcome"]) for a in out["zones_tried"]] == [(ZONE, "stockout"), ("us-central1-f", "created")]
    assert "us-central1-a: out of capacity for n1-standard-8 + t4:1." in result.stderr
    # the data disk made for the failed zone was removed, the new one lives beside the VM
    assert [(d["name"], d["zone"].rsplit("/", 1)[-1]) for d in env.disks() if d["name"] == "box-data"] == [("box-data", "us-central1-f")]


def test_synchronous_503_stockout_is_not_retried_in_place(env):
    env.stockout(ZONE, sync_503=True)
    result = run("up", "box", "--gpu", "t4", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["zone"] == "us-central1-b"
    zones = [r.path.split("/zones/")[1].split("/")[0] for r in env.calls("compute.instances.insert")]
    assert zones == [ZONE, "us-central1-b"]


def test_stockout_everywhere_leaves_nothing_behind(env, monkeypatch):
    from gcpdl.spec import GPUS

    for zone in ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f", "us-east1-c", "us-east1-d", "europe-west4-a"]:
        env.stockout(zone)
    result = run("up", "box", "--gpu", "t4", "--yes", "--data-disk", "100")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1].startswith("Error: No capacity for box (n1-standard-8, t4:1) in the zones tried (us-central1-a: stockout; ")
    assert env.instances() == [] and env.disks() == [] and env.firewalls() == []
    assert len(env.calls("compute.instances.insert")) == 6  # MAX_ZONE_ATTEMPTS
    assert GPUS["t4"].accelerator == "nvidia-tesla-t4"


@pytest.mark.parametrize("mode", ["auto", "operation"])  # a synchronous 403, or the operation's error
def test_gpus_all_regions_quota_stops_at_once(env, mode):
    """The insert's own quota error, when the pre-flight could not read the quota (it normally
    stops before any mutation: tests/test_quota_preflight.py)."""
    env.quota_error_mode = mode
    env.deny("compute.projects.get")
    env.set_quota("GPUS_ALL_REGIONS", 0)
    result = run("up", "box", "--gpu", "t4", "--yes", "--data-disk", "100")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        "Error: Quota GPUS_ALL_REGIONS exceeded for the project (all regions). Request GPUS_ALL_REGIONS at "
        "https://console.cloud.google.com/iam-admin/quotas?project=test-project&metric=compute.googleapis.com/gpus_all_regions "
        "(approval usually takes from a few hours to 2 business days; "
        "free-trial accounts must upgrade to a paid account before any GPU quota is granted)."
    )
    assert len(env.calls("compute.instances.insert")) == 1
    assert env.instances() == [] and env.disks() == [] and env.firewalls() == []


@pytest.mark.parametrize("mode", ["auto", "sync"])
def test_regional_quota_skips_the_region(env, mode):
    """On the insert's own error, when the pre-flight could not read the region's quota."""
    env.quota_error_mode = mode
    env.deny("compute.regions.get")
    env.set_quota("NVIDIA_T4_GPUS", 0, region="us-central1")
    env.omit_http_error_status = True  # the operation error still surfaces without it
    result = run("up", "box", "--gpu", "t4", "--yes", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["zone"] == "us-east1-c"
    assert "Skipping region us-central1." in result.stderr
    assert [a["zone"] for a in out["zones_tried"]] == [ZONE, "us-east1-c"]


def test_existing_data_disk_is_kept_when_the_insert_fails(env):
    assert run("up", "box", "--gpu", "t4", "--yes", "--data-disk", "100").exit_code == 0
    assert run("down", "box", "--yes").exit_code == 0
    env.set_quota("GPUS_ALL_REGIONS", 0)
    result = run("up", "box", "--gpu", "t4", "--yes", "--data-disk", "100")
    assert result.exit_code == 1
    assert [d["name"] for d in env.disks()] == ["box-data"]
    assert env.calls("compute.disks.delete") == []


def test_existing_data_disk_pins_the_zone(env):
    env.set_quota("GPUS_ALL_REGIONS", 16)
    assert run("up", "box", "--gpu", "t4", "--yes", "--data-disk", "100", "--zone", "us-central1-c").exit_code == 0
    assert run("down", "box", "--yes").exit_code == 0
    result = run("up", "box", "--gpu", "t4", "--yes", "--data-disk", "100", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["zone"] == "us-central1-c"
    assert "Using the existing data disk box-data in us-central1-c." in result.stderr
    assert len(env.calls("compute.disks.insert")) == 1
    inst = env.instance("us-central1-c", "box")
    assert [d.get("deviceName") for d in inst["disks"]] == ["boot", "data"]


def test_retries_429_and_5xx_on_reads_and_mutations(env):
    env.fail_next(429, times=1, method="GET", path="/aggregated/instances")
    env.fail_next(503, times=2, method="POST", path="/instances$")
    env.fail_next(500, times=1, method="POST", path="/firewalls$")
    result = run("up", "box", "--gpu", "t4", "--yes")
    assert result.exit_code == 0, result.output
    assert len(env.calls("compute.instances.insert")) == 3
    assert len(env.calls("compute.firewalls.insert")) == 3  # the first of the two rules is retried once
    assert len(env.instances()) == 1 and len(env.firewalls()) == 2
    # one requestId per logical insert, the same on every retry
    assert len({r.query.get("requestId") for r in env.calls("compute.instances.insert")}) == 1


def test_operation_that_never_finishes_hits_the_deadline(env):
    """A fake clock: the wait gives up at its deadline without sleeping for real."""
    from gcpdl.compute import lifecycle
    from gcpdl.errors import DeadlineExceeded
    from gcpdl.spec import build_spec

    class Clock:
        t = 0.0

        def now(self):
            return self.t

        def sleep(self, s):
            self.t += max(s, 10.0)  # each pause jumps the clock: a handful of real requests

    clock = Clock()
    env.operation_polls = 10_000
    ctx = lifecycle.UpContext(compute=_compute(clock=clock.now, sleep=clock.sleep), zones=[ZONE], ssh_from="203.0.113.7/32")
    with pytest.raises(DeadlineExceeded) as info:
        lifecycle.up(ctx, build_spec("box", gpu="t4"))
    assert "Timed out after 600s waiting for box to be created" in str(info.value)


@pytest.mark.parametrize(
    "setup, line, code",
    [
        (lambda f: f.disable_api(),
         "Error: The Compute Engine API (compute.googleapis.com) is not enabled in project test-project. "
         "Run: gcloud services enable compute.googleapis.com --project test-project", 1),
        (lambda f: f.disable_billing(),
         "Error: Billing is not enabled for project test-project. Link a billing account: "
         "https://console.cloud.google.com/billing/linkedaccount?project=test-project", 1),
        (lambda f: f.project_missing(),
         "Error: Project test-project not found. Check the project id (gcloud projects list) or pass --project.", 1),
        (lambda f: f.deny("compute.instances.create"),
         "Error: Permission denied: you lack compute.instances.create in project test-project. "
         "Ask a project owner for a role that includes it (e.g. roles/compute.instanceAdmin.v1).", 1),
    ],
)
def test_account_problems_are_one_line_and_create_nothing(env, setup, line, code):
    setup(env)
    result = run("up", "box", "--gpu", "t4", "--yes", "--data-disk", "100")
    assert result.exit_code == code, result.output
    assert result.stderr.splitlines()[-1] == line
    assert "Traceback" not in result.output
    assert env.instances() == [] and env.disks() == [] and env.firewalls() == []


def test_missing_credentials(env, monkeypatch, tmp_path):
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "nope.json"))
    result = run("up", "box", "--gpu", "t4", "--yes")
    assert result.exit_code == 1
    line = result.stderr.strip()
    # the variable names a missing file: say so, and that the variable is what to fix
    assert line == (f"Error: The credentials file {tmp_path / 'nope.json'} (named by GOOGLE_APPLICATION_CREDENTIALS) cannot be "
                    "used: the file does not exist. Fix it, point GOOGLE_APPLICATION_CREDENTIALS at a valid key file, or unset "
                    "it to use your gcloud login.")
    assert env.requests == []


@pytest.mark.parametrize(
    "args, line",
    [
        (["--gpu", "p4"], "Error: GPU p4 (nvidia-tesla-p4) is not offered in zone us-central1-a. Zones that offer it: us-central1-c, europe-west4-a."),
        (["--gpu", "t4", "--disk", "55"], "Error: --disk 55 GB is smaller than the image pytorch-2-7-cu128-ubuntu-2204-nvidia-570 (60 GB); use --disk 60 or more."),
        (["--cpu-only", "--image-family", "no-such-family", "--image-project", "debian-cloud"], "Error: Image family no-such-family in project debian-cloud not found."),
        (["--cpu-only", "--machine", "e2-standard-64"], "Error: Machine type e2-standard-64 does not exist in zone us-central1-a."),
        (["--cpu-only", "--zone", "us-central1-z"], "Error: Zone us-central1-z does not exist. See the zones with: gcloud compute zones list"),
        (["--gpu", "t4", "--zone", "us-central1-z"], "Error: GPU t4 (nvidia-tesla-t4) is not offered in zone us-central1-z. Zones that offer it: us-central1-a, us-central1-b, us-central1-c, us-central1-f, us-east1-c."),
    ],
)
def test_zone_and_image_checks_happen_before_any_mutation(env, args, line):
    result = run("up", "box", *args, "--yes")
    assert result.exit_code in (1, 2), result.output
    assert result.stderr.splitlines()[-1] == line
    assert mutations(env) == []


def test_count_above_zone_maximum():
    from gcpdl.compute.zones import check_zone
    from gcpdl.errors import InvalidInput
    from gcpdl.spec import build_spec

    with pytest.raises(InvalidInput) as info:
        check_zone(build_spec("box", gpu="v100:8"), "us-central1-a", {"us-central1-a": 4})
    assert str(info.value) == "Zone us-central1-a allows at most 4 v100 GPUs per VM, not 8."


def test_price_above_threshold_asks_and_no_means_nothing_created(env, monkeypatch):
    monkeypatch.setenv("GCPDL_CONFIRM_ABOVE", "0.10")
    result = run("up", "box", "--gpu", "t4", input="n\n")
    assert result.exit_code == 0  # "n" is an answer, not an error (issue 10)
    assert "This VM costs about $" in result.stderr
    assert result.stderr.splitlines()[-1] == "Nothing created."
    assert mutations(env) == []


def test_compute_clients_import_only_their_service_modules():
    """clients.compute_class loads one service module, yet the whole package still works."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from gcpdl.clients import compute_class\n"
        "c = compute_class('InstancesClient')\n"
        "loaded = {m.split('.')[4] for m in sys.modules if m.startswith('google.cloud.compute_v1.services.')}\n"
        "assert loaded == {'instances', 'zone_operations'}, loaded\n"  # its ExtendedOperation needs the second
        "from google.cloud import compute_v1\n"
        "assert compute_v1.InstancesClient is c\n"
        "from google.cloud.compute_v1 import FirewallsClient, Instance\n"
        "assert Instance.__name__ == 'Instance' and FirewallsClient.__name__ == 'FirewallsClient'\n"
        "print('OK')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "OK", out.stderr


def test_refused_insert_removes_what_this_run_created(env):
    env.fail_next(400, times=1, method="POST", path="/instances$")
    result = run("up", "box", "--gpu", "t4", "--yes", "--data-disk", "100")
    assert result.exit_code == 2
    assert result.stderr.splitlines()[-1] == "Error: Compute Engine refused the request: Injected failure 400"
    assert "Removed firewall rule gcpdl-ssh-box created by this run." in result.stderr
    assert "Removed data disk box-data created by this run." in result.stderr
    assert env.instances() == [] and env.disks() == [] and env.firewalls() == []


def test_spot_with_max_hours_stops_not_deletes(env):
    result = run("up", "box", "--gpu", "t4", "--spot", "--max-hours", "2", "--yes")
    assert result.exit_code == 0, result.output
    sched = env.instance(ZONE, "box")["scheduling"]
    assert sched["provisioningModel"] == "SPOT" and sched["instanceTerminationAction"] == "STOP"
    assert sched["maxRunDuration"] == {"seconds": "7200"}


def test_ready_step_runs_last_with_its_own_deadline(env):
    """The slot the SSH/Jupyter readiness step (issue 3) plugs into."""
    from gcpdl.compute import lifecycle
    from gcpdl.spec import build_spec

    seen = []

    def ready(inst, deadline):
        seen.append((inst.name, inst.status, deadline.what, len(env.calls("compute.instances.insert"))))
        return {"host": inst.external_ip}

    ctx = lifecycle.UpContext(compute=_compute(), zones=[ZONE], ssh_from="203.0.113.7/32", ready=ready)
    result = lifecycle.up(ctx, build_spec("box", gpu="t4"))
    assert seen == [("box", "RUNNING", "box to be ready", 1)]
    assert result.ssh == {"host": "127.0.0.1"} and result.as_dict()["ready"] == {"host": "127.0.0.1"}


def test_lost_reply_on_insert_is_retried_with_the_same_request_id(env):
    """The insert took effect but its reply was a 503: the retry must not create a second VM
    (or fail on alreadyExists): requestId makes the API answer with the first operation."""
    env.fail_next(503, times=1, method="POST", path="/instances$", after=True)
    env.fail_next(502, times=1, method="POST", path="/disks$", after=True)
    result = run("up", "box", "--gpu", "t4", "--yes", "--data-disk", "100", "--json")
    assert result.exit_code == 0, result.output
    inserts = env.calls("compute.instances.insert")
    assert len(inserts) == 2 and inserts[0].query["requestId"] == inserts[1].query["requestId"]
    assert len(env.instances()) == 1 and [d["name"] for d in env.disks()] == ["box", "box-data"]


def test_up_without_gpu_flag_restarts_the_vm_as_it_is(env):
    env.add_instance("box", status="TERMINATED", labels={"gcpdl": "managed"}, machine_type="g2-standard-8")
    result = run("up", "box", "--yes", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["action"], out["gpu"], out["differences"]) == ("started", "l4", [])
    assert "Warning" not in result.stderr


def test_up_without_gpu_flag_creates_a_t4(env):
    result = run("up", "box", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["gpu"] == "t4"
    assert "No --gpu given: creating box with 1 t4 (n1-standard-8)." in result.stderr


def test_standard_vm_with_max_hours(env):
    """maxRunDuration works for standard VMs too (cloud.google.com/compute/docs/instances/limit-vm-runtime);
    instanceTerminationAction goes with it."""
    result = run("up", "box", "--gpu", "t4", "--max-hours", "3", "--yes")
    assert result.exit_code == 0, result.output
    sched = env.instance(ZONE, "box")["scheduling"]
    assert sched["provisioningModel"] == "STANDARD" and sched["instanceTerminationAction"] == "STOP"
    assert sched["maxRunDuration"] == {"seconds": "10800"}


def test_differences_only_for_what_was_asked(env):
    env.add_instance("box", status="TERMINATED", labels={"gcpdl": "managed"}, machine_type="n1-standard-8",
                     spot=True, disk_size_gb=200)
    result = run("up", "box", "--gpu", "t4", "--yes", "--json")
    assert json.loads(result.stdout)["differences"] == []
    env.add_instance("std", status="TERMINATED", labels={"gcpdl": "managed"}, machine_type="n1-standard-8", disk_size_gb=200)
    result = run("up", "std", "--gpu", "t4", "--spot", "--disk", "100", "--data-disk", "50", "--yes", "--json")
    assert json.loads(result.stdout)["differences"] == [
        "it is not a Spot VM", "boot disk is 200 GB, not 100 GB", "it has no data disk std-data"]


def test_error_mapping_names_the_missing_resource():
    from gcpdl.compute import errors as ce

    def mapped(message, what=""):
        err = ce.from_rest(404, {"error": {"code": 404, "message": message, "errors": [{"reason": "notFound", "message": message}]}})
        return ce.to_gcpdl(err, "p", what)

    e = mapped("The resource 'projects/p/global/networks/default' was not found", "Firewall rule gcpdl-ssh-box")
    assert (e.message, e.fix) == ("Project p has no 'default' VPC network.",
                                  "Create it with: gcloud compute networks create default --subnet-mode=auto --project p")
    assert mapped("The resource 'projects/p/zones/z/disks/box-data' was not found", "VM box").message == "Not found: projects/p/zones/z/disks/box-data."
    assert mapped("The resource 'projects/p/zones/z/instances/box' was not found", "VM box").message == "VM box not found."
    assert mapped("The resource 'projects/p' was not found", "VM box").message == "Project p not found."


def test_rule_created_meanwhile_by_another_laptop_is_patched(env):
    """409 on the rule insert: it exists now, so set its source instead of failing `up`."""
    from gcpdl.compute import firewall
    from gcpdl.compute import requests as rq
    from gcpdl.deadline import Deadline

    compute = _compute()
    compute.run(rq.firewall_insert(env.project, "box", "198.51.100.1/32"), Deadline(30))
    created = firewall.apply(compute, "box", rq.firewall_insert(env.project, "box", "203.0.113.7/32"), Deadline(30))
    assert created is False
    (rule,) = env.firewalls()
    assert rule["sourceRanges"] == ["203.0.113.7/32"]


def test_missing_credentials_is_the_first_thing_said(monkeypatch):
    """No ADC and no network: the credentials error comes before the public-IP lookup."""
    monkeypatch.setenv("GCPDL_PROJECT", "my-project")
    result = run("up", "box", "--gpu", "t4", "--zone", "us-central1-a", "--yes")
    assert result.exit_code == 1
    assert result.stderr == (
        "Error: No Google credentials found (Your default credentials were not found). "
        "Run: gcloud auth application-default login\n"
    )
