"""The VM's network (issue 8 §2 and §6): the per-VM deny rule that shuts the default network's
`default-allow-ssh`, rules that open ports to the world, projects without a `default` network,
and `up --network/--subnet`. All against the fake Compute server, whose `reachable()` evaluates
VPC firewall rules the way VPC does."""

from __future__ import annotations

import json

import pytest

from tests.helpers import ZONE, run

CALLER = "203.0.113.7"
STRANGER = "198.51.100.66"


def mutations(fake) -> list[str]:
    return [r.method_id for r in fake.requests if r.method in ("POST", "PATCH", "DELETE") and not r.method_id.endswith(".wait")]


def rule_names(fake) -> list[str]:
    return [f["name"] for f in fake.firewalls()]


# --- the fake itself evaluates rules as VPC does ------------------------------------------
def test_fake_evaluates_rules_like_vpc(gcp):
    gcp.add_instance("vm", tags=["web"])
    assert not gcp.reachable("vm", STRANGER)  # implied deny ingress
    gcp.seed_default_rules()
    assert gcp.reachable("vm", STRANGER)  # default-allow-ssh: everyone, every VM
    assert not gcp.reachable("vm", STRANGER, port=80)
    gcp.firewalls_by_name["d"] = gcp._firewall_body(gcp.project, "d", {
        "name": "d", "priority": 65534, "denied": [{"IPProtocol": "tcp", "ports": ["22"]}],
        "sourceRanges": ["0.0.0.0/0"], "targetTags": ["web"]})
    assert not gcp.reachable("vm", STRANGER)  # equal priority: the deny wins
    gcp.firewalls_by_name["a"] = gcp._firewall_body(gcp.project, "a", {
        "name": "a", "priority": 10, "allowed": [{"IPProtocol": "all"}], "sourceRanges": [f"{CALLER}/32"], "targetTags": ["other"]})
    assert not gcp.reachable("vm", CALLER)  # another tag: not this VM
    assert gcp.reachable("vm", "10.128.0.9", port=5000)  # default-allow-internal


@pytest.mark.parametrize("body, message", [
    ({"allowed": [{"IPProtocol": "tcp"}], "denied": [{"IPProtocol": "tcp"}]}, "Exactly one of allowed or denied"),
    ({}, "Exactly one of allowed or denied"),
    ({"allowed": [{"IPProtocol": "tcp"}], "priority": 70000}, "Must be between 0 and 65535"),
    ({"allowed": [{"IPProtocol": "tcp"}], "sourceRanges": ["1.2.3.4/33"]}, "valid IPV4 or IPV6 CIDR"),
    ({"allowed": [{"IPProtocol": "tcp", "ports": ["70000"]}]}, "port number or a range"),
    ({"allowed": [{"IPProtocol": "tcp"}], "network": "global/networks/nope"}, "network resource cannot be found"),
    ({"allowed": [{"IPProtocol": "tcp"}], "targetTags": ["a"], "targetServiceAccounts": ["x@y"]}, "cannot be set at the same time"),
])
def test_fake_validates_firewall_bodies(gcp, body, message):
    error = gcp.check("POST", f"/compute/v1/projects/{gcp.project}/global/firewalls", {"name": "r", **body})
    assert error is None  # the shape is fine; the API's own rules refuse it
    from tests.fakes.compute_common import ApiError

    with pytest.raises(ApiError, match=message):
        gcp._firewall_body(gcp.project, "r", {"name": "r", **body})


# --- issue 8 §2: default-allow-ssh -----------------------------------------------------------
def test_up_on_a_default_vpc_project_leaves_ssh_open_only_to_the_caller(env):
    """A project as it comes carries default-allow-ssh (tcp:22 from anywhere, priority 65534).
    gcpdl's deny rule for the VM's tag closes it; only the caller's /32 gets through."""
    env.seed_default_rules()
    result = run("up", "box", "--gpu", "t4", "--yes")
    assert result.exit_code == 0, result.output
    assert env.reachable("box", CALLER)
    assert not env.reachable("box", STRANGER)
    deny = next(f for f in env.firewalls() if f["name"] == "gcpdl-deny-ssh-box")
    assert deny["denied"] == [{"IPProtocol": "tcp", "ports": ["22"]}] and deny["sourceRanges"] == ["0.0.0.0/0"]
    assert deny["targetTags"] == ["gcpdl-box"] and 1000 < deny["priority"] < 65534
    # the deny rule exists before the VM does: never reachable from the world, not for a moment
    order = mutations(env)
    assert order.index("compute.firewalls.insert") < order.index("compute.instances.insert")
    deny_insert = next(r for r in env.requests if r.method_id == "compute.firewalls.insert" and r.body["name"] == "gcpdl-deny-ssh-box")
    inst_insert = next(r for r in env.requests if r.method_id == "compute.instances.insert")
    assert env.requests.index(deny_insert) < env.requests.index(inst_insert)


def test_dry_run_shows_the_deny_rule(env):
    result = run("up", "box", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    reqs = json.loads(result.stdout)["requests"]
    bodies = [r["body"] for r in reqs if r["path"].endswith("/global/firewalls")]
    assert [b["name"] for b in bodies] == ["gcpdl-ssh-box", "gcpdl-deny-ssh-box"]
    assert [r["path"].rsplit("/", 1)[-1] for r in reqs].index("firewalls") < [r["path"].rsplit("/", 1)[-1] for r in reqs].index("instances")
    human = run("up", "box", "--dry-run")
    assert "denied to everyone else" in human.stdout


def test_down_removes_both_rules(env):
    env.seed_default_rules()
    assert run("up", "box", "--yes").exit_code == 0
    result = run("down", "box", "--yes")
    assert result.exit_code == 0, result.output
    assert "firewall rule gcpdl-deny-ssh-box" in result.stdout
    assert not [n for n in rule_names(env) if n.startswith("gcpdl-")]


def test_down_leftovers_removes_the_deny_rule(env):
    assert run("up", "box", "--yes").exit_code == 0
    assert sorted(rule_names(env)) == ["gcpdl-deny-ssh-box", "gcpdl-ssh-box"]
    env.instances_by_key.clear()  # deleted in the console
    result = run("down", "box", "--yes")
    assert result.exit_code == 0, result.output
    assert rule_names(env) == []


def test_failed_create_removes_only_rules_this_run_created(env):
    env.set_quota("GPUS_ALL_REGIONS", 0)
    env.quota_error_mode = "sync"
    env.deny("compute.projects.get")  # the pre-flight cannot read the quota: the insert fails instead
    result = run("up", "box", "--yes")
    assert result.exit_code != 0
    assert rule_names(env) == []
    assert "Removed firewall rule gcpdl-deny-ssh-box created by this run." in result.stderr


def test_up_on_existing_vm_recreates_a_missing_deny_rule(env):
    env.seed_default_rules()
    assert run("up", "box", "--yes").exit_code == 0
    del env.firewalls_by_name["gcpdl-deny-ssh-box"]
    assert env.reachable("box", STRANGER)
    result = run("up", "box", "--yes")
    assert result.exit_code == 0, result.output
    assert not env.reachable("box", STRANGER) and env.reachable("box", CALLER)


def test_up_on_existing_vm_repairs_a_changed_deny_rule(env):
    assert run("up", "box", "--yes").exit_code == 0
    env.firewalls_by_name["gcpdl-deny-ssh-box"]["sourceRanges"] = ["192.0.2.0/24"]
    assert run("up", "box", "--yes").exit_code == 0
    assert env.firewalls_by_name["gcpdl-deny-ssh-box"]["sourceRanges"] == ["0.0.0.0/0"]


def test_start_repoints_the_allow_rule_when_the_address_changed(env, monkeypatch):
    env.seed_default_rules()
    assert run("up", "box", "--yes").exit_code == 0
    assert run("stop", "box").exit_code == 0
    monkeypatch.setenv("GCPDL_MY_IP", "198.51.100.9")
    result = run("start", "box")
    assert result.exit_code == 0, result.output
    assert env.firewalls_by_name["gcpdl-ssh-box"]["sourceRanges"] == ["198.51.100.9/32"]
    assert env.reachable("box", "198.51.100.9") and not env.reachable("box", CALLER)
    assert "SSH now allowed from 198.51.100.9/32" in result.stderr


# --- issue 8 §6: projects without a default network, --network/--subnet ----------------------
def test_up_without_a_default_network_stops_before_creating_anything(env):
    env.remove_network("default")
    result = run("up", "box", "--yes")
    assert result.exit_code != 0
    assert "has no network named 'default'" in result.stderr
    assert "gcloud compute networks create default --subnet-mode=auto" in result.stderr
    assert "--network" in result.stderr
    assert "Traceback" not in result.output
    assert mutations(env) == [] and env.firewalls() == []


def test_up_with_an_unknown_network(env):
    result = run("up", "box", "--yes", "--network", "nope")
    assert result.exit_code != 0
    assert result.stderr.startswith("Error: Project test-project has no network named 'nope'.")
    assert mutations(env) == []


def test_up_in_a_custom_vpc_takes_the_regions_only_subnet(env):
    env.remove_network("default")
    env.add_network("lab-net", auto=False)
    env.add_subnet("lab-central", "us-central1", "lab-net")
    env.add_subnet("lab-east", "us-east1", "lab-net")
    result = run("up", "box", "--yes", "--network", "lab-net")
    assert result.exit_code == 0, result.output
    (body,) = [r.body for r in env.calls("compute.instances.insert")]
    nic = body["networkInterfaces"][0]
    assert nic["network"] == "projects/test-project/global/networks/lab-net"
    assert nic["subnetwork"] == "projects/test-project/regions/us-central1/subnetworks/lab-central"
    assert {f["network"].rsplit("/", 1)[-1] for f in env.firewalls()} == {"lab-net"}
    assert env.reachable("box", CALLER) and not env.reachable("box", STRANGER)


def test_custom_vpc_with_several_subnets_asks_for_one(env, monkeypatch):
    env.add_network("lab-net", auto=False)
    env.add_subnet("a-net", "us-central1", "lab-net", "10.1.0.0/24")
    env.add_subnet("b-net", "us-central1", "lab-net", "10.2.0.0/24")
    result = run("up", "box", "--yes", "--network", "lab-net")
    assert result.exit_code != 0
    assert "Network lab-net has 2 subnets in region us-central1 (a-net, b-net); say which with --subnet." in result.stderr
    assert mutations(env) == []
    monkeypatch.setenv("GCPDL_NETWORK", "lab-net")
    monkeypatch.setenv("GCPDL_SUBNET", "b-net")
    result = run("up", "box", "--yes")
    assert result.exit_code == 0, result.output
    (body,) = [r.body for r in env.calls("compute.instances.insert")]
    assert body["networkInterfaces"][0]["subnetwork"].endswith("/regions/us-central1/subnetworks/b-net")


def test_custom_vpc_without_a_subnet_in_the_region(env):
    env.add_network("lab-net", auto=False)
    env.add_subnet("lab-east", "us-east1", "lab-net")
    result = run("up", "box", "--yes", "--network", "lab-net")
    assert result.exit_code != 0
    assert "Network lab-net has no subnet in region us-central1 (it has subnets in: us-east1)." in result.stderr
    assert "gcloud compute networks subnets create" in result.stderr
    assert mutations(env) == []


def test_unknown_subnet(env):
    result = run("up", "box", "--yes", "--subnet", "nope")
    assert result.exit_code != 0
    assert "Network default has no subnet 'nope' in region us-central1 (its subnets there: default)." in result.stderr
    assert mutations(env) == []


@pytest.mark.parametrize("args, env_name, value", [
    (("--network", "Bad Net"), None, None),
    (("--subnet", "x_y"), None, None),
    ((), "GCPDL_NETWORK", "bad/../net"),
    ((), "GCPDL_SUBNET", "UPPER"),
])
def test_bad_network_names_are_refused_before_any_request(env, monkeypatch, args, env_name, value):
    if env_name:
        monkeypatch.setenv(env_name, value)
    result = run("up", "box", "--yes", *args)
    assert result.exit_code != 0
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.output
    assert env.requests == []


def test_dry_run_uses_the_network_and_subnet(env):
    result = run("up", "box", "--dry-run", "--json", "--network", "lab-net", "--subnet", "lab-central")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["network"] == "lab-net" and plan["subnet"] == "lab-central"
    fws = [r["body"] for r in plan["requests"] if r["path"].endswith("/firewalls")]
    assert {b["network"] for b in fws} == {f"projects/{plan['project']}/global/networks/lab-net"}
    inst = next(r["body"] for r in plan["requests"] if r["path"].endswith("/instances"))
    assert inst["networkInterfaces"][0]["subnetwork"].endswith("/regions/us-central1/subnetworks/lab-central")


def test_config_set_network_is_validated(env):
    assert run("config", "set", "network", "Bad Net").exit_code != 0
    ok = run("config", "set", "network", "lab-net")
    assert ok.exit_code == 0, ok.output


# --- doctor and status: other rules that open gcpdl's VMs to the world -------------------------
def _open_rule(fake, name: str, allowed: list, priority: int = 1000, tags: list | None = None) -> None:
    body = {"name": name, "network": "global/networks/default", "priority": priority, "allowed": allowed,
            "sourceRanges": ["0.0.0.0/0"], **({"targetTags": tags} if tags else {})}
    with fake._lock:
        fake.firewalls_by_name[name] = fake._firewall_body(fake.project, name, body)


def test_status_reports_rules_that_open_other_ports_to_the_world(env):
    env.seed_default_rules()
    assert run("up", "box", "--yes").exit_code == 0
    _open_rule(env, "notebooks", [{"IPProtocol": "tcp", "ports": ["8888"]}])
    result = run("status", "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert [o["rule"] for o in row["open_to_world"]] == ["default-allow-rdp", "notebooks"]
    assert ("Warning: Firewall rule notebooks opens tcp:8888 to the whole internet for box; gcpdl's deny rule covers "
            "port 22 but not the other ports. Delete it if nothing needs it: gcloud compute firewall-rules delete notebooks") in result.stderr
    # default-allow-ssh is shut by gcpdl's deny rule, default-allow-icmp opens no port: not warned about
    assert "default-allow-ssh" not in result.stderr and "default-allow-icmp" not in result.stderr


def test_status_says_when_ssh_is_open_to_everyone(env):
    env.seed_default_rules()
    assert run("up", "box", "--yes").exit_code == 0
    with env._lock:
        del env.firewalls_by_name["gcpdl-deny-ssh-box"]
    result = run("status")
    assert result.exit_code == 0, result.output
    assert "default-allow-ssh opens tcp:22 to the whole internet for box, and gcpdl's deny rule for box is missing" in result.stderr
    assert "gcpdl start box" in result.stderr


def test_doctor_reports_world_open_rules(env):
    env.seed_default_rules()
    _open_rule(env, "everything", [{"IPProtocol": "all"}], priority=900)
    result = run("doctor", "--cpu-only", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["firewall everything"]["ok"] is False
    assert "outranks gcpdl's deny rule: SSH is open to everyone" in checks["firewall everything"]["detail"]
    assert checks["firewall everything"]["fix"] == "gcloud compute firewall-rules delete everything"
    assert checks["firewall default-allow-ssh"]["ok"] is True
    assert "gcpdl's deny rule shuts it for port 22" in checks["firewall default-allow-ssh"]["detail"]
    assert checks["firewall default-allow-rdp"]["ok"] is True  # reported, but no VM of gcpdl's listens on 3389
    assert "covers port 22 but not the other ports" in checks["firewall default-allow-rdp"]["detail"]
    assert result.exit_code == 1


def test_doctor_checks_the_network(env):
    env.remove_network("default")
    result = run("doctor", "--cpu-only", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["network default"]["ok"] is False
    assert "gcloud compute networks create default --subnet-mode=auto" in checks["network default"]["fix"]


# --- ssh / jupyter: a timeout because the caller's address moved -------------------------------
@pytest.fixture
def blackhole():
    """A TCP port on 127.0.0.1 that drops new connections, as a firewall does: its accept queue
    (backlog 0) is full, so the kernel drops further SYNs and connect() times out."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname())
    try:
        yield listener.getsockname()[1]
    finally:
        filler.close()
        listener.close()


@pytest.fixture
def moved(gcp, blackhole, monkeypatch):
    """box runs; its SSH rule allows the old address; this laptop is now somewhere else."""
    gcp.add_instance("box", labels={"gcpdl": "managed"}, nat_ip="127.0.0.1", tags=["gcpdl-box"])
    with gcp._lock:
        body = {"name": "gcpdl-ssh-box", "network": "global/networks/default", "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}],
                "sourceRanges": [f"{CALLER}/32"], "targetTags": ["gcpdl-box"]}
        gcp.firewalls_by_name["gcpdl-ssh-box"] = gcp._firewall_body(gcp.project, "gcpdl-ssh-box", body)
    monkeypatch.setenv("GCPDL_MY_IP", "198.51.100.9")
    monkeypatch.setenv("GCPDL_ZONE", ZONE)
    monkeypatch.setenv("GCPDL_SSH_PORT", str(blackhole))
    monkeypatch.setenv("GCPDL_SSH_WAIT", "1")  # one connect attempt: the port never answers
    return gcp


@pytest.mark.parametrize("command", [("ssh", "box", "--", "true"), ("jupyter", "box", "--no-browser")])
def test_a_timeout_after_the_address_changed_says_how_to_repoint_the_rule(moved, command):
    result = run(*command)
    assert result.exit_code != 0
    assert "connection timed out" in result.stderr
    assert (f"Your address changed: the SSH firewall rule gcpdl-ssh-box allows {CALLER}/32, and you are now at 198.51.100.9."
            in result.stderr)
    assert "Re-point the rule with: gcpdl start box (or gcpdl up box)" in result.stderr
    assert "Traceback" not in result.output


def test_a_timeout_from_the_allowed_address_says_nothing_about_the_rule(moved, monkeypatch):
    monkeypatch.setenv("GCPDL_MY_IP", CALLER)
    result = run("ssh", "box", "--", "true")
    assert result.exit_code != 0
    assert "connection timed out" in result.stderr
    assert "address changed" not in result.stderr and "Re-point" not in result.stderr


def test_fake_serves_networks_and_subnetworks_over_rest(gcp):
    """networks.get / subnetworks.get and list through the real REST session gcpdl reads with."""
    from gcpdl.clients import ClientFactory
    from gcpdl.compute.adapter import Compute
    from gcpdl.deadline import Deadline
    from gcpdl.settings import resolve

    gcp.add_network("lab-net", auto=False)
    gcp.add_subnet("lab-central", "us-central1", "lab-net", "10.20.0.0/24")
    compute = Compute(ClientFactory(resolve()), gcp.project)
    base = f"/compute/v1/projects/{gcp.project}"
    net = compute.get(f"{base}/global/networks/lab-net", Deadline(10))
    assert net["autoCreateSubnetworks"] is False
    assert net["subnetworks"] == ["https://www.googleapis.com/compute/v1/projects/test-project/regions/us-central1/subnetworks/lab-central"]
    assert len(compute.get(f"{base}/global/networks/default", Deadline(10))["subnetworks"]) == 3  # one per region
    sub = compute.get(f"{base}/regions/us-central1/subnetworks/lab-central", Deadline(10))
    assert sub["ipCidrRange"] == "10.20.0.0/24" and sub["network"].endswith("/global/networks/lab-net")
    names = [s["name"] for s in compute.get(f"{base}/regions/us-central1/subnetworks", Deadline(10))["items"]]
    assert names == ["default", "lab-central"]
    assert compute.get_or_none(f"{base}/regions/us-east1/subnetworks/lab-central", Deadline(10)) is None
    gcp.remove_network("default")
    assert compute.get_or_none(f"{base}/global/networks/default", Deadline(10)) is None
