"""`gcpdl up NAME --nodes N` against the fake Compute Engine: all-or-nothing, placement, rules."""

from __future__ import annotations

import json

import pytest

from tests.helpers import ZONE, run


def names(fake) -> list[str]:
    return sorted(i["name"] for i in fake.instances())


def rules(fake) -> dict[str, dict]:
    return {f["name"]: f for f in fake.firewalls()}


def test_up_nodes_creates_the_group_with_compact_placement_and_cluster_rules(env):
    result = run("up", "c", "--nodes", "3", "--gpu", "l4", "--yes", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [n["name"] for n in out["nodes"]] == ["c-0", "c-1", "c-2"]
    assert names(env) == ["c-0", "c-1", "c-2"]
    # one compact policy in the zone's region, used by every node
    [policy] = env.policies()
    assert policy["name"] == "gcpdl-place-c" and policy["groupPlacementPolicy"] == {"collocation": "COLLOCATED"}
    assert policy["region"].endswith("/regions/us-central1")
    for inst in env.instances():
        assert [p.rsplit("/", 1)[-1] for p in inst["resourcePolicies"]] == ["gcpdl-place-c"]
        assert inst["tags"]["items"] == ["gcpdl-c"]
        assert inst["labels"]["gcpdl-cluster"] == "c" and inst["labels"]["gcpdl-nodes"] == "3"
    assert sorted(inst["labels"]["gcpdl-node"] for inst in env.instances()) == ["0", "1", "2"]
    r = rules(env)
    assert sorted(r) == ["gcpdl-deny-ssh-c", "gcpdl-intra-c", "gcpdl-ssh-c"]
    intra = r["gcpdl-intra-c"]
    # outranks the deny (a strictly lower number), tag-only: no source ranges ORed in
    assert intra["priority"] < r["gcpdl-deny-ssh-c"]["priority"] == 2000
    assert intra["sourceTags"] == intra["targetTags"] == ["gcpdl-c"] and "sourceRanges" not in intra
    assert intra["allowed"] == [{"IPProtocol": "all"}]
    assert r["gcpdl-ssh-c"]["sourceRanges"] == ["203.0.113.7/32"] and r["gcpdl-ssh-c"]["targetTags"] == ["gcpdl-c"]
    # the whole cluster's price, not one node's
    assert out["price_per_hour"] > 0 and len(env.calls("compute.instances.insert")) == 3


def test_n1_gets_no_placement_policy(env):
    """N1 allows only spread placement: a compact policy would be refused, so none is made."""
    result = run("up", "t", "--nodes", "2", "--gpu", "t4", "--yes")
    assert result.exit_code == 0, result.output
    assert env.policies() == [] and names(env) == ["t-0", "t-1"]
    assert all("resourcePolicies" not in i for i in env.instances())


def test_fake_refuses_compact_policy_for_n1(env):
    """The fake checks what the real API checks (so the test above means something)."""
    from gcpdl.compute import requests as rq
    from tests.test_up import _compute

    compute = _compute()
    from gcpdl.deadline import Deadline

    d = Deadline(30)
    compute.clients_for(["resourcePolicies.insert", "instances.insert"])
    compute.run(rq.placement_insert(env.project, "us-central1", "x", 2), d)
    from gcpdl.errors import GcpdlError
    from gcpdl.spec import build_spec

    spec = build_spec("x-0", gpu="t4")
    body = rq.node_body(env.project, ZONE, spec, "x", 0, 2, rq.policy_url(env.project, "us-central1", "gcpdl-place-x"),
                        ssh_keys="", startup_script="#!/bin/sh", now=0)
    with pytest.raises(GcpdlError, match="Compact placement policies are not supported"):
        compute.run(rq.instance_insert(env.project, ZONE, body), d)


def test_plan_shows_n_times_the_price_and_every_request(env):
    one = json.loads(run("up", "c", "--gpu", "l4", "--dry-run", "--json").stdout)
    result = run("up", "c", "--nodes", "4", "--gpu", "l4", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["price_per_hour"] == round(4 * one["price_per_hour"], 2)
    kinds = [(r["method"], r["path"].rsplit("/", 1)[-1]) for r in plan["requests"]]
    assert kinds == [("POST", "firewalls")] * 3 + [("POST", "resourcePolicies")] + [("POST", "instances")] * 4
    for r in plan["requests"]:
        assert env.check(r["method"], r["path"], r.get("body")) is None, r
    human = run("up", "c", "--nodes", "4", "--gpu", "l4", "--dry-run")
    assert f"4 x ${one['price_per_hour']:.2f}/h = ${plan['price_per_hour']:.2f}/h" in human.stderr + human.stdout
    assert env.instances() == [] and all(r.method == "GET" for r in env.requests)  # OS Login read only


def test_stockout_on_the_third_node_deletes_the_first_two_and_fails_over(env):
    env.stockout(ZONE, after=2)
    result = run("up", "c", "--nodes", "3", "--gpu", "l4", "--yes", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["zone"] == "us-central1-b"
    assert [(a["zone"], a["outcome"]) for a in out["zones_tried"]] == [(ZONE, "stockout"), ("us-central1-b", "created")]
    assert {i["zone"].rsplit("/", 1)[-1] for i in env.instances()} == {"us-central1-b"}
    assert names(env) == ["c-0", "c-1", "c-2"]
    # the two that fitted in us-central1-a (which two depends on which insert arrived third)
    deleted = [r.path.rsplit("/", 1)[-1] for r in env.calls("compute.instances.delete")]
    assert len(set(deleted)) == 2 and set(deleted) < {"c-0", "c-1", "c-2"}
    assert all("/zones/us-central1-a/" in r.path for r in env.calls("compute.instances.delete"))
    assert "a cluster is created whole or not at all" in result.stderr


def test_failover_to_another_region_moves_the_placement_policy(env):
    for z in ("us-central1-a", "us-central1-b", "us-central1-c"):
        env.stockout(z, after=1)
    env.stockout("us-central1-f")
    result = run("up", "c", "--nodes", "2", "--gpu", "l4", "--yes", "--json")
    assert result.exit_code == 0, result.output
    zone = json.loads(result.stdout)["zone"]
    assert zone.startswith("us-east1")
    assert [p["name"] + "@" + p["region"].rsplit("/", 1)[-1] for p in env.policies()] == ["gcpdl-place-c@us-east1"]


def test_stockout_everywhere_leaves_nothing(env):
    for zone in ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f", "us-east1-c", "us-east1-d", "europe-west4-a"]:
        env.stockout(zone, after=1)
    result = run("up", "c", "--nodes", "2", "--gpu", "l4", "--yes")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1].startswith("Error: No zone had capacity for all 2 nodes of c")
    assert env.instances() == [] and env.firewalls() == [] and env.policies() == []


def test_bad_node_counts_are_refused_before_any_call(env):
    for n, msg in (("0", "a cluster has 1 to 64 nodes"), ("65", "a cluster has 1 to 64 nodes")):
        result = run("up", "c", "--nodes", n, "--yes")
        assert result.exit_code != 0 and msg in result.stderr, result.output
    long = "x" * 62
    result = run("up", long, "--nodes", "10", "--yes")
    assert result.exit_code != 0 and "must fit in 63 characters" in result.stderr
    result = run("up", "c", "--nodes", "2", "--data-disk", "100", "--yes")
    assert result.exit_code != 0 and "--on NAME" in result.stderr
    assert env.requests == []


def test_up_again_reuses_and_a_missing_node_is_made_again(env):
    assert run("up", "c", "--nodes", "2", "--gpu", "l4", "--yes").exit_code == 0
    env.preempt(ZONE, "c-1")
    # a node deleted by hand
    with env._lock:
        env._remove_instance(ZONE, env.instances_by_key[(ZONE, "c-0")])
    result = run("up", "c", "--nodes", "2", "--yes", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["action"] == "repaired"
    assert [(n["name"], n["state"]) for n in out["nodes"]] == [("c-0", "RUNNING"), ("c-1", "RUNNING")]


def test_a_single_vm_of_that_name_is_not_a_cluster(env):
    assert run("up", "c", "--gpu", "t4", "--yes").exit_code == 0
    result = run("up", "c", "--nodes", "2", "--gpu", "t4", "--yes")
    assert result.exit_code == 2 and "a cluster needs a name of its own" in result.stderr


def test_stop_start_down_status_treat_the_cluster_as_a_unit(env):
    assert run("up", "c", "--nodes", "3", "--gpu", "l4", "--spot", "--yes").exit_code == 0
    assert run("up", "solo", "--gpu", "t4", "--yes").exit_code == 0
    st = run("status", "c", "--json")
    assert st.exit_code == 0, st.output
    assert [(r["name"], r["cluster"]) for r in json.loads(st.stdout)] == [("c-0", "c"), ("c-1", "c"), ("c-2", "c")]
    result = run("stop", "c", "--json")
    assert result.exit_code == 0, result.output
    assert [(r["name"], r["state"]) for r in json.loads(result.stdout)] == [(f"c-{k}", "TERMINATED") for k in range(3)]
    assert env.instance(ZONE, "solo")["status"] == "RUNNING"
    env.internal_ips.clear()
    result = run("start", "c", "--json")
    assert result.exit_code == 0, result.output
    assert {r["state"] for r in json.loads(result.stdout)} == {"RUNNING"}
    env.preempt(ZONE, "c-2")
    human = run("status")
    assert "cluster c: 3 nodes (1 preempted, 2 running)" in human.stdout, human.output
    assert "gcpdl up c --nodes 3" in human.stdout
    result = run("down", "c", "--yes", "--json")
    assert result.exit_code == 0, result.output
    deleted = json.loads(result.stdout)["deleted"]
    assert {"instance c-0", "instance c-1", "instance c-2", "placement policy gcpdl-place-c", "firewall rule gcpdl-ssh-c",
            "firewall rule gcpdl-intra-c", "firewall rule gcpdl-deny-ssh-c"} <= set(deleted)
    assert names(env) == ["solo"] and env.policies() == []
    assert sorted(rules(env)) == ["gcpdl-deny-ssh-solo", "gcpdl-ssh-solo"]
    # the deny rule went last, after every node was gone
    deletes = [r.path.rsplit("/", 1)[-1] for r in env.requests if r.method == "DELETE"]
    assert deletes.index("gcpdl-deny-ssh-c") > max(deletes.index(f"c-{k}") for k in range(3))


def test_stop_of_nothing_still_says_no_vm(env):
    result = run("stop", "nothing")
    assert result.exit_code != 0 and "No VM named nothing" in result.stderr


def test_autostop_and_cost_cover_every_node(env):
    assert run("up", "c", "--nodes", "2", "--gpu", "l4", "--yes").exit_code == 0
    result = run("autostop", "c", "30m", "--json")
    assert result.exit_code == 0, result.output
    assert [(r["name"], r["minutes"]) for r in json.loads(result.stdout)] == [("c-0", 30), ("c-1", 30)]
    for inst in env.instances():
        items = {i["key"]: i["value"] for i in inst["metadata"]["items"]}
        assert items["gcpdl-autostop"] == "30"
    result = run("cost", "c", "--json")
    assert result.exit_code == 0, result.output
    assert sorted(v["name"] for v in json.loads(result.stdout)["vms"]) == ["c-0", "c-1"]


def test_ray_flag_needs_nodes_and_the_ready_wait(env):
    result = run("up", "c", "--ray", "--yes")
    assert result.exit_code == 2 and "--ray is for a cluster: add --nodes N." in result.stderr
    result = run("up", "c", "--nodes", "2", "--ray", "--yes")  # helpers.run adds --no-wait
    assert result.exit_code == 2 and "--ray starts Ray once every node is ready: leave out --no-wait." in result.stderr
    assert env.requests == []


def test_human_output_names_every_node_and_the_cluster_price(env):
    result = run("up", "c", "--nodes", "2", "--gpu", "l4", "--yes")
    assert result.exit_code == 0, result.output
    assert "Created cluster c: 2 nodes in us-central1-a" in result.stdout
    assert "c-0" in result.stdout and "c-1" in result.stdout and "for the cluster while running" in result.stdout
    assert "gcpdl run c -- CMD" in result.stdout


def test_plain_up_on_a_cluster_name_brings_the_cluster_back_whole(env):
    """Not a new lone VM named after the cluster (it would carry the cluster's tag and rules)."""
    assert run("up", "c", "--nodes", "3", "--gpu", "l4", "--spot", "--yes").exit_code == 0
    env.preempt(ZONE, "c-1")
    result = run("up", "c", "--yes", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["action"] == "started" and [n["state"] for n in out["nodes"]] == ["RUNNING"] * 3
    assert names(env) == ["c-0", "c-1", "c-2"]


def test_status_knows_the_cluster_deny_rule_shuts_default_allow_ssh(env):
    """default-allow-ssh (0.0.0.0/0 tcp:22, every VM) is shut for the nodes by the CLUSTER's deny
    rule (gcpdl-deny-ssh-c on tag gcpdl-c): no node is reported open to the world."""
    env.seed_default_rules()
    assert run("up", "c", "--nodes", "2", "--gpu", "l4", "--yes").exit_code == 0
    result = run("status", "--json")
    assert result.exit_code == 0, result.output
    for row in json.loads(result.stdout):
        assert all(not o["ssh_open"] for o in row["open_to_world"]), row["open_to_world"]
    assert "SSH is open to everyone" not in result.stderr


def test_one_node_started_alone_uses_the_clusters_rules(env, monkeypatch):
    """`start c-1` (or `up c-1`) points the cluster's SSH rule at the caller's new address; it
    makes no per-node rules (the node does not carry their tag)."""
    assert run("up", "c", "--nodes", "2", "--gpu", "l4", "--yes").exit_code == 0
    assert run("stop", "c-1").exit_code == 0
    monkeypatch.setenv("GCPDL_MY_IP", "198.51.100.9")
    result = run("start", "c-1")
    assert result.exit_code == 0, result.output
    r = rules(env)
    assert sorted(r) == ["gcpdl-deny-ssh-c", "gcpdl-intra-c", "gcpdl-ssh-c"]
    assert r["gcpdl-ssh-c"]["sourceRanges"] == ["198.51.100.9/32"]
    assert run("up", "c-0", "--yes").exit_code == 0
    assert sorted(rules(env)) == ["gcpdl-deny-ssh-c", "gcpdl-intra-c", "gcpdl-ssh-c"]
