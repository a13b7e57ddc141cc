"""Clusters: `up NAME --nodes N` makes NAME-0 ... NAME-{N-1} in one zone, as one unit.

Built on the single-VM flow (gcpdl.compute.lifecycle): the same pre-flight reads, request
builders, zone failover, firewall rules and ready step, applied to N bodies at once.

- All-or-nothing: the N inserts go out together; if any fails, what this run created in that
  zone is deleted (in parallel) before the next zone is tried, and before the error is raised.
- One zone, so one region: a compact placement policy (COLLOCATED) in that region where the
  machine family supports one (A2, A3, G2, N2...; N1 and E2 allow only spread placement).
  Policies are regional: failover to another region makes a new one there.
- Firewall: the cluster's tag (gcpdl-NAME) carries the SSH allow rule from the caller, the SSH
  deny rule for everyone else, and one rule admitting all traffic between the nodes only
  (sourceTags = targetTags = the tag, priority 1500: above the deny's 2000).
- Membership is in labels (gcpdl-cluster, gcpdl-node, gcpdl-nodes), so any command can find the
  cluster with one filtered list.
Nothing here prints; progress goes through the context's callback.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from gcpdl.compute import firewall as fw
from gcpdl.compute import lifecycle as lc
from gcpdl.compute import lookup
from gcpdl.compute import network as nw
from gcpdl.compute import quota as qt
from gcpdl.compute import requests as rq
from gcpdl.compute import zones as zn
from gcpdl.compute.adapter import Compute, prefetch
from gcpdl.compute.model import ApiCall, Instance, ZoneAttempt
from gcpdl.deadline import Deadline
from gcpdl.errors import Aborted, InvalidInput, NotFound, QuotaExceeded, Stockout
from gcpdl.pricing import region_of
from gcpdl.spec import VmSpec

MAX_NODES = 64
MAX_PARALLEL = 16  # inserts, deletes and SSH sessions in flight at once


class IsCluster(InvalidInput):
    """`up NAME` (no --nodes) where NAME is a cluster: the CLI brings the cluster back whole."""

    def __init__(self, name: str, nodes: int):
        super().__init__(f"{name} is a cluster of {nodes} nodes.", fix=f"Run: gcpdl up {name} --nodes {nodes}")
        self.nodes = nodes


# --- names and validation ---------------------------------------------------------------------
def node_name(cluster: str, rank: int) -> str:
    return f"{cluster}-{rank}"


def validate(name: str, nodes: int, spec: VmSpec | None = None) -> None:
    """Input checks that need no network (before the first API call)."""
    if not 1 <= nodes <= MAX_NODES:
        raise InvalidInput(f"--nodes {nodes}: a cluster has 1 to {MAX_NODES} nodes.")
    last = node_name(name, nodes - 1)
    if len(last) > 63:
        raise InvalidInput(f"Cluster name {name} is too long for {nodes} nodes: node names ({last}) must fit in 63 characters.")
    if spec is not None and spec.data_disk_gb:
        raise InvalidInput("--data-disk is for one VM; a cluster's nodes sync their data with `gcpdl sync gs://... --on NAME`.")


def node_specs(spec: VmSpec, nodes: int) -> list[VmSpec]:
    return [dataclasses.replace(spec, name=node_name(spec.name, k)) for k in range(nodes)]


# --- the cluster as found -----------------------------------------------------------------------
@dataclass
class Cluster:
    name: str
    nodes: list[Instance]  # sorted by rank

    @property
    def size(self) -> int:
        """How many nodes it was made with (a node deleted by hand is missing, not forgotten)."""
        labelled = [int(n.labels.get(rq.NODES_LABEL, "0") or 0) for n in self.nodes]
        return max(labelled + [len(self.nodes)])

    @property
    def zone(self) -> str:
        return self.nodes[0].zone

    @property
    def head(self) -> Instance:
        return self.nodes[0]

    def missing(self) -> list[int]:
        have = {rank_of(n) for n in self.nodes}
        return [k for k in range(self.size) if k not in have]


def rank_of(inst: Instance) -> int:
    try:
        return int(inst.labels.get(rq.NODE_LABEL, "0"))
    except ValueError:
        return 0


def cluster_of(inst: Instance) -> str | None:
    return inst.labels.get(rq.CLUSTER_LABEL) or None


def find(compute: Compute, name: str, deadline: Deadline) -> Cluster | None:
    """The cluster's nodes (one filtered aggregated list), or None when it has none."""
    found = compute.aggregated("instances", deadline, filter=f"labels.{rq.CLUSTER_LABEL} = {name}")
    nodes = [Instance.from_api(i) for items in found.values() for i in items]
    nodes = [n for n in nodes if n.managed and cluster_of(n) == name]  # the filter is an optimisation
    if not nodes:
        return None
    nodes.sort(key=rank_of)
    lookup.remember(compute, *nodes)
    return Cluster(name, nodes)


def require(compute: Compute, name: str, deadline: Deadline) -> Cluster:
    found = find(compute, name, deadline)
    if found is None:
        raise NotFound(f"No cluster named {name} in project {compute.project}.", fix="See your VMs with: gcpdl status")
    return found


# --- plan (dry-run) -----------------------------------------------------------------------------
@dataclass
class ClusterPlan:
    plan: lc.Plan  # node 0's plan; its requests are replaced by the cluster's
    nodes: int

    def as_dict(self) -> dict[str, Any]:
        d = self.plan.as_dict()
        d["nodes"] = self.nodes
        d["node_names"] = [node_name(self.plan.spec.name, k) for k in range(self.nodes)]
        d["price_per_node_hour"] = self.plan.price_per_hour
        d["price_per_hour"] = round(self.plan.price_per_hour * self.nodes, 2)
        d["placement"] = "compact" if rq.supports_compact(self.plan.spec.machine_type) else "none (the machine family allows only spread placement)"
        return d


def plan(project: str, zone: str, spec: VmSpec, nodes: int, ssh_from: str, now: Callable[[], float] = time.time,
         login: Any = None) -> ClusterPlan:
    ssh_keys, startup = lc.login_extras(spec, login)
    calls = create_calls(project, zone, spec, nodes, ssh_from, ssh_keys, startup, now(), spec.subnet)
    return ClusterPlan(lc.Plan(project, zone, spec, calls, lc.price_for(spec, zone), ssh_from), nodes)


def create_calls(project: str, zone: str, spec: VmSpec, nodes: int, ssh_from: str, ssh_keys: str, startup: str,
                 now: float, subnet: str | None) -> list[ApiCall]:
    """Every request that makes the cluster from nothing, in order."""
    calls = [rq.firewall_insert(project, spec.name, ssh_from, spec.network), rq.deny_insert(project, spec.name, spec.network),
             rq.intra_insert(project, spec.name, spec.network)]
    policy = None
    if rq.supports_compact(spec.machine_type):
        calls.append(rq.placement_insert(project, region_of(zone), spec.name, nodes))
        policy = rq.policy_url(project, region_of(zone), rq.placement_policy_name(spec.name))
    for k, node in enumerate(node_specs(spec, nodes)):
        body = rq.node_body(project, zone, node, spec.name, k, nodes, policy, ssh_keys=ssh_keys, startup_script=startup,
                            now=now, subnet=subnet)
        calls.append(rq.instance_insert(project, zone, body))
    return calls


# --- up -----------------------------------------------------------------------------------------
@dataclass
class ClusterUpResult:
    name: str
    nodes: list[Instance]
    action: str  # "created", "started", "reused", "repaired"
    price_per_hour: float  # the whole cluster
    attempts: list[ZoneAttempt] = field(default_factory=list)
    ssh_from: str | None = None
    ready: list[Any] = field(default_factory=list)
    api_calls: int = 0
    placement: str | None = None  # the policy's name, when there is one

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "action": self.action,
            "zone": self.nodes[0].zone if self.nodes else None,
            "nodes": [{**n.summary(), "internal_ip": n.internal_ip, "rank": rank_of(n)} for n in self.nodes],
            "price_per_hour": self.price_per_hour,
            "zones_tried": [dataclasses.asdict(a) for a in self.attempts],
            "ssh_from": self.ssh_from,
            "placement_policy": self.placement,
            "firewall_rules": [rq.firewall_name(self.name), rq.deny_rule_name(self.name), rq.intra_rule_name(self.name)],
            "ready": [r.as_dict() if hasattr(r, "as_dict") else r for r in self.ready],
        }


@dataclass
class _Created:
    """What this run made, for the all-or-nothing cleanup."""

    rules: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)  # regions


def up(ctx: lc.UpContext, spec: VmSpec, nodes: int) -> ClusterUpResult:
    validate(spec.name, nodes, spec)
    compute = ctx.compute
    prefetch()
    deadline = compute.new_deadline(lc.PREFLIGHT_TIMEOUT, f"the checks before creating cluster {spec.name}")
    compute.authorize(deadline)
    project, first, name = compute.project, ctx.zones[0], spec.name

    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="gcpdl-read") as pool:
        oslogin = compute.factory.oslogin()
        reads = lc.create_reads(pool, compute, oslogin, spec, first, deadline)
        f_cluster = pool.submit(find, compute, name, deadline)
        f_single = pool.submit(lookup.find, compute, name, deadline)  # a single VM with the cluster's name
        f_rules = [pool.submit(compute.get_or_none, p, deadline)
                   for p in (fw.rule_path(project, name), fw.deny_path(project, name), fw.intra_path(project, name))]
        single = f_single.result()
        if single is not None and cluster_of(single) is None:
            raise InvalidInput(f"A VM named {name} already exists (in {single.zone}); a cluster needs a name of its own.",
                               fix=f"Choose another name, or `gcpdl down {name}` first.")
        rules = [f.result() for f in f_rules]
        existing = f_cluster.result()
        if existing is not None:
            return _reuse(ctx, spec, nodes, existing, rules, reads.net.result())
        offered = reads.offered.result() if reads.offered else None
        image = reads.image.result()
        net_doc = reads.net.result()
        project_doc = reads.project.result()

    if reads.zone is not None and reads.zone.result() is None:
        raise InvalidInput(f"Zone {first} does not exist. See the zones with: gcloud compute zones list")
    zn.check_zone(spec, first, offered or {})
    image_gb = int(image.get("diskSizeGb") or 0)
    if spec.disk_gb < image_gb:
        raise InvalidInput(f"--disk {spec.disk_gb} GB is smaller than the image {spec.image_family} ({image_gb} GB); use --disk {image_gb} or more.")
    queue = zn.next_zones(first, ctx.zones, offered, spec)
    choice = nw.choose(project, spec.network, spec.subnet, net_doc, first, ctx.network_given)
    queue = [z for z in queue if choice.usable(z)]
    if reads.quota is not None:
        # the whole group's GPUs must fit in one region's quota
        group = dataclasses.replace(spec, gpu_count=spec.gpu_count * nodes)
        project_quotas = None if project_doc is None else project_doc.get("quotas") or []
        placed = qt.place(compute, group, first, queue, project_quotas, {region_of(first): reads.quota.result()}, deadline)
        if placed.skipped:
            ctx.attempts.append(ZoneAttempt(placed.skipped[0], "quota", placed.skipped[1]))
            ctx.progress(f"  {placed.skipped[0]}: {placed.skipped[1]} Skipping region {region_of(placed.skipped[0])}.")
        first, queue = placed.first, placed.queue

    price = round(lc.price_for(spec, first) * nodes, 2)
    if ctx.confirm is not None and price > ctx.confirm_above and not ctx.confirm(price):
        raise Aborted("Nothing created.")
    if oslogin.setting({}).enabled:
        oslogin.require_roles_for_new_vm()
    extras = lc.login_extras(spec, oslogin.login({}))

    rule_calls = [c for c in (fw.plan_rule(project, name, ctx.ssh_from, rules[0], spec.network),
                              fw.plan_deny(project, name, rules[1], spec.network)) if c is not None]
    intra_call = fw.plan_intra(project, name, rules[2], spec.network)
    kinds = ["instances.insert", "instances.delete", "firewalls.insert", "firewalls.patch", "firewalls.delete"]
    if rq.supports_compact(spec.machine_type):
        kinds += ["resourcePolicies.insert", "resourcePolicies.delete"]
    compute.clients_for(kinds)
    create_deadline = compute.new_deadline(lc.CREATE_TIMEOUT, f"cluster {name} to be created")
    made = _Created()
    # The deny rule must exist before any node does (as for one VM), the intra-cluster rule before
    # the nodes look for each other; both are made while the placement policy is, and the SSH
    # allow rule beside the inserts: the group's critical path is one VM's.
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="gcpdl-fw") as pool:
        guards = [(c.resource, pool.submit(fw.apply, compute, name, c, create_deadline)) for c in rule_calls
                  if c.resource != rq.firewall_name(name)]
        if intra_call is not None:
            guards.append((intra_call.resource, pool.submit(fw.apply_intra, compute, name, intra_call, create_deadline)))
        allow = [(c.resource, pool.submit(fw.apply, compute, name, c, create_deadline)) for c in rule_calls
                 if c.resource == rq.firewall_name(name)]

        def before_insert() -> None:
            for rule, f in guards:
                if f.result() and rule not in made.rules:
                    made.rules.append(rule)

        try:
            zone = _create_group(ctx, spec, nodes, first, queue, create_deadline, extras, choice, made,
                                 before_insert=before_insert)
            for rule, f in allow:
                if f.result():
                    made.rules.append(rule)
        except BaseException:
            for rule, f in guards + allow:
                if lc._settle(f) and rule not in made.rules:
                    made.rules.append(rule)
            _undo(ctx, name, made)
            raise
    members = require(compute, name, create_deadline).nodes
    result = ClusterUpResult(name, members, "created", round(lc.price_for(spec, zone) * nodes, 2), ctx.attempts, ctx.ssh_from,
                             placement=rq.placement_policy_name(name) if rq.supports_compact(spec.machine_type) else None)
    return _finish(ctx, result)


def _create_group(ctx: lc.UpContext, spec: VmSpec, nodes: int, first: str, queue: list[str], deadline: Deadline,
                  extras: tuple[str, str], choice: nw.NetworkChoice, made: _Created,
                  ranks: list[int] | None = None, before_insert: Callable[[], None] | None = None) -> str:
    """Insert the nodes (``ranks``, default all) in ``first``, then ``queue`` on stockout or
    regional quota, the whole group each time. Returns the zone used."""
    compute, project, name = ctx.compute, ctx.compute.project, spec.name
    ranks = list(range(nodes)) if ranks is None else ranks
    ssh_keys, startup = extras
    tried: set[str] = set()
    skip_regions: set[str] = set()
    zone: str | None = first
    while zone is not None:
        tried.add(zone)
        region = region_of(zone)
        policy = None
        if rq.supports_compact(spec.machine_type):
            policy = _ensure_policy(compute, region, name, nodes, deadline, made)
        ctx.progress(f"Creating {len(ranks)} node{'s' if len(ranks) != 1 else ''} of {name} in {zone}...")
        bodies = [rq.node_body(project, zone, dataclasses.replace(spec, name=node_name(name, k)), name, k, nodes, policy,
                               ssh_keys=ssh_keys, startup_script=startup, now=ctx.now(), subnet=choice.subnet_for(zone))
                  for k in ranks]
        if before_insert is not None:
            before_insert()  # the firewall rules the nodes need from their first second
        error = _insert_all(ctx, zone, bodies, deadline)
        if error is None:
            ctx.attempts.append(ZoneAttempt(zone, "created"))
            return zone
        if not isinstance(error, (Stockout, QuotaExceeded)):
            raise error
        api = getattr(error, "api_error", None)
        if isinstance(error, QuotaExceeded):
            ctx.attempts.append(ZoneAttempt(zone, "quota", error.message))
            if getattr(error, "global_quota", True):
                raise error
            skip_regions.add(region)
            ctx.progress(f"  {zone}: {error.message} Skipping region {region}.")
        else:
            ctx.attempts.append(ZoneAttempt(zone, "stockout", f"no capacity for {len(ranks)} x {spec.machine_type} right now"))
            ctx.progress(f"  {zone}: out of capacity for {len(ranks)} x {spec.machine_type}"
                         f"{' + ' + spec.gpu_label if spec.attached_gpu else ''}.")
        available = api.zones_available if api is not None else []
        queue = [z for z in zn.reorder(queue, available, tried, skip_regions) if choice.usable(z)]
        if len(tried) >= zn.MAX_ZONE_ATTEMPTS:
            queue = []
        nxt = queue.pop(0) if queue else None
        if nxt is not None and region_of(nxt) != region and region in made.policies:
            # placement policies are regional: the next region gets its own, this one goes now
            _drop_policy(ctx, region, name, made)
        zone = nxt
    summary = "; ".join(f"{a.zone}: {a.outcome}" for a in ctx.attempts)
    raise Stockout(
        f"No zone had capacity for all {len(ranks)} nodes of {name} ({spec.machine_type}"
        f"{', ' + spec.gpu_label if spec.gpu else ''}) at once ({summary}). Nothing was left running.",
        fix="Try again later, fewer --nodes, another GPU, --spot, or more zones (gcpdl config set zones ZONE,ZONE).",
    )


def _insert_all(ctx: lc.UpContext, zone: str, bodies: list[dict], deadline: Deadline) -> BaseException | None:
    """Send every insert at once and wait for all. On any failure the nodes this call made are
    deleted (in parallel) and the first failure is returned: the group is all or nothing."""
    compute, project = ctx.compute, ctx.compute.project

    def one(body: dict) -> str:
        compute.run(rq.instance_insert(project, zone, body), deadline)
        return body["name"]

    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(bodies)), thread_name_prefix="gcpdl-insert") as pool:
        futures = [pool.submit(one, b) for b in bodies]
        made, errors = [], []
        for f in futures:
            try:
                made.append(f.result())
            except BaseException as e:  # noqa: BLE001 - collected; the first is returned
                errors.append(e)
    if not errors:
        return None
    # the failed inserts may have made nothing; the ones that succeeded are removed
    _delete_nodes(ctx, zone, made, "this run")
    first = next((e for e in errors if not isinstance(e, (Stockout, QuotaExceeded))), errors[0])
    if isinstance(first, (KeyboardInterrupt, SystemExit)):
        raise first
    return first


def _delete_nodes(ctx: lc.UpContext, zone: str, names: list[str], by: str) -> None:
    if not names:
        return
    compute = ctx.compute
    ctx.progress(f"Deleting the {len(names)} node{'s' if len(names) != 1 else ''} {by} created in {zone} ({', '.join(names)}): "
                 "a cluster is created whole or not at all.")
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(names)), thread_name_prefix="gcpdl-delete") as pool:
        for n in names:
            pool.submit(lc._cleanup, ctx, rq.instance_delete(compute.project, zone, n), f"VM {n}")


def _ensure_policy(compute: Compute, region: str, cluster: str, nodes: int, deadline: Deadline, made: _Created) -> str:
    from gcpdl.errors import Conflict

    if region not in made.policies:
        path = f"{rq.region_path(compute.project, region)}/resourcePolicies/{rq.placement_policy_name(cluster)}"
        if compute.get_or_none(path, deadline) is None:
            try:
                compute.run(rq.placement_insert(compute.project, region, cluster, nodes), deadline)
                made.policies.append(region)
            except Conflict:
                pass  # made since we looked: use it
    return rq.policy_url(compute.project, region, rq.placement_policy_name(cluster))


def _drop_policy(ctx: lc.UpContext, region: str, cluster: str, made: _Created) -> None:
    lc._cleanup(ctx, rq.placement_delete(ctx.compute.project, region, cluster), f"placement policy {rq.placement_policy_name(cluster)}")
    made.policies.remove(region)


def _undo(ctx: lc.UpContext, cluster: str, made: _Created) -> None:
    """The run failed: remove the policies and rules it made (its nodes are already gone). The
    deny rule last, once nothing else of the cluster is left for it to protect."""
    for region in list(made.policies):
        _drop_policy(ctx, region, cluster, made)
    deny = rq.deny_rule_name(cluster)
    for rule in sorted(made.rules, key=lambda r: r == deny):
        lc._cleanup(ctx, rq.rule_delete(ctx.compute.project, rule), f"firewall rule {rule}")


def _reuse(ctx: lc.UpContext, spec: VmSpec, nodes: int, cluster: Cluster, rules: list[dict | None],
           net_doc: dict | None) -> ClusterUpResult:
    """`up` on a cluster that exists: rules put right, stopped nodes started, missing nodes
    (deleted by hand) made again in the cluster's zone: the cluster comes back whole."""
    compute, project, name = ctx.compute, ctx.compute.project, spec.name
    if nodes != cluster.size:
        raise InvalidInput(f"Cluster {name} has {cluster.size} nodes, not {nodes}.",
                           fix=f"Run `gcpdl up {name} --nodes {cluster.size}`, or `gcpdl down {name}` first to change its size.")
    deadline = compute.new_deadline(lc.START_TIMEOUT, f"cluster {name} to start")
    network = cluster.head.network
    calls = [c for c in (fw.plan_rule(project, name, ctx.ssh_from, rules[0], network),
                         fw.plan_deny(project, name, rules[1], network)) if c is not None]
    intra = fw.plan_intra(project, name, rules[2], network)
    if calls or intra:
        compute.clients_for(["firewalls.insert", "firewalls.patch"])
    for c in calls:
        fw.apply(compute, name, c, deadline)
    if intra is not None:
        fw.apply_intra(compute, name, intra, deadline)
    action = "reused"
    missing = cluster.missing()
    if missing:
        ctx.progress(f"{len(missing)} node(s) of {name} are gone ({', '.join(node_name(name, k) for k in missing)}); making them again.")
        head = cluster.head  # a plain `up NAME --nodes N` means "as it was made"
        template = spec if spec.gpu_given else dataclasses.replace(
            spec, gpu=head.gpu, gpu_count=head.gpu_count, machine_type=head.machine_type, spot=head.spot or spec.spot)
        oslogin = compute.factory.oslogin()
        extras = lc.login_extras(template, oslogin.login({}))
        choice = nw.choose(project, network, spec.subnet, net_doc, cluster.zone, ctx.network_given)
        compute.clients_for(["instances.insert", "instances.delete", "resourcePolicies.insert"])
        _create_group(ctx, dataclasses.replace(template, name=name), nodes, cluster.zone, [], deadline, extras, choice,
                      _Created(), ranks=missing)
        action = "repaired"
    stopped = [n for n in cluster.nodes if n.status != "RUNNING"]
    if stopped:
        ctx.progress(f"Starting {len(stopped)} node(s) of {name} in {cluster.zone}...")
        compute.clients_for(["instances.setMetadata", "instances.start"])
        _each(stopped, lambda n: lc._start(compute, n, deadline, ctx.now))
        action = "started" if action == "reused" else action
    elif not missing:
        ctx.progress(f"Cluster {name} is already running in {cluster.zone}.")
    members = require(compute, name, deadline).nodes
    price = round(sum(lc._price_of(n) for n in members), 2)
    policy = rq.placement_policy_name(name) if rq.supports_compact(members[0].machine_type) else None
    return _finish(ctx, ClusterUpResult(name, members, action, price, ctx.attempts, ctx.ssh_from, placement=policy))


def _finish(ctx: lc.UpContext, result: ClusterUpResult) -> ClusterUpResult:
    """Every node made usable (startup, SSH, host keys), in parallel, under one deadline."""
    if ctx.ready is not None:
        deadline = ctx.compute.new_deadline(lc.READY_TIMEOUT, f"cluster {result.name} to be ready")
        result.ready = _each(result.nodes, lambda n: ctx.ready(n, deadline))  # type: ignore[misc]
    result.api_calls = ctx.compute.calls
    return result


def _each(items: list[Any], fn: Callable[[Any], Any]) -> list[Any]:
    """fn over items in parallel; results in order; the first error raised once all are done."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(items)), thread_name_prefix="gcpdl-node") as pool:
        futures = [pool.submit(fn, i) for i in items]
        out, errors = [], []
        for f in futures:
            try:
                out.append(f.result())
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
                out.append(None)
    if errors:
        raise errors[0]
    return out


# --- stop / start / down as a unit ----------------------------------------------------------------
def stop(compute: Compute, name: str, now: Callable[[], float] = time.time, progress: lc.Progress = lc._quiet) -> list[Instance]:
    deadline = compute.new_deadline(lc.STOP_TIMEOUT, f"cluster {name} to stop")
    cluster = require(compute, name, deadline)
    running = [n for n in cluster.nodes if n.status not in lc.STOPPED_STATES]
    if running:
        progress(f"Stopping {len(running)} node(s) of {name} in {cluster.zone}...")
    return _each(cluster.nodes, lambda n: lc.stop(compute, n.name, now=now))


def start(compute: Compute, name: str, now: Callable[[], float] = time.time, progress: lc.Progress = lc._quiet,
          ssh_from: str | None = None) -> list[Instance]:
    deadline = compute.new_deadline(lc.START_TIMEOUT, f"cluster {name} to start")
    cluster = require(compute, name, deadline)
    fw.ensure_rules(compute, name, ssh_from, deadline, cluster.head.network, progress)
    intra = fw.plan_intra(compute.project, name, compute.get_or_none(fw.intra_path(compute.project, name), deadline),
                          cluster.head.network)
    if intra is not None:
        compute.clients_for(["firewalls.insert", "firewalls.patch"])
        fw.apply_intra(compute, name, intra, deadline)
    if cluster.missing():
        raise InvalidInput(f"Cluster {name} is missing node(s) {', '.join(node_name(name, k) for k in cluster.missing())}.",
                           fix=f"Make it whole again with: gcpdl up {name} --nodes {cluster.size}")
    stopped = [n for n in cluster.nodes if n.status != "RUNNING"]
    if stopped:
        progress(f"Starting {len(stopped)} node(s) of {name} in {cluster.zone}...")
        compute.clients_for(["instances.setMetadata", "instances.start"])
    started = _each(cluster.nodes, lambda n: lc._start(compute, n, deadline, now))
    lookup.remember(compute, *started)
    return started


def down(compute: Compute, name: str, confirm: Callable[[str], bool] | None = None, progress: lc.Progress = lc._quiet,
         now: Callable[[], float] = time.time, delete_data: bool = False) -> lc.DownResult:
    """Delete every node (in parallel), then the placement policy, the SSH and intra rules, the
    deny rule last. The shared disk (a dataset) is kept unless ``delete_data``."""
    deadline = compute.new_deadline(lc.DELETE_TIMEOUT, f"cluster {name} to be deleted")
    cluster = require(compute, name, deadline)
    if confirm is not None and not confirm(f"cluster {name} ({len(cluster.nodes)} nodes in {cluster.zone})"):
        raise Aborted("Nothing deleted.")
    compute.clients_for(["instances.setMetadata", "instances.delete", "firewalls.delete", "resourcePolicies.delete"])
    progress(f"Deleting the {len(cluster.nodes)} nodes of {name} in {cluster.zone}...")
    results = _each(cluster.nodes, lambda n: lc.down(compute, n.name, now=now))
    deleted = [d for r in results for d in r.deleted]
    region = region_of(cluster.zone)
    try:
        compute.run(rq.placement_delete(compute.project, region, name), deadline)
        deleted.append(f"placement policy {rq.placement_policy_name(name)}")
    except NotFound:
        pass
    for rule in (rq.firewall_name(name), rq.intra_rule_name(name), rq.deny_rule_name(name)):
        if lc._delete_rule(compute, rule, deadline):
            deleted.append(f"firewall rule {rule}")
    disk = rq.shared_disk_name(name)
    kept_disks = lc._kept_disk(compute, cluster.zone, disk, deadline)
    if kept_disks and delete_data:
        compute.run(rq.disk_delete(compute.project, cluster.zone, disk), deadline)
        return lc.DownResult(name, cluster.zone, deleted + [f"data disk {disk}"], [])
    if kept_disks:
        return lc.DownResult(name, cluster.zone, deleted, [f"data disk {disk}"], kept_disks)
    return lc.DownResult(name, cluster.zone, deleted, [])


__all__ = ["Cluster", "ClusterPlan", "ClusterUpResult", "MAX_NODES", "create_calls", "down", "find", "node_name", "plan",
           "rank_of", "require", "start", "stop", "up", "validate"]


# --- --shared: one data disk for the whole cluster ---------------------------------------------------
def _has_shared(inst: Instance, cluster: str) -> bool:
    return rq.shared_disk_name(cluster) in inst.disks


def attach_shared(compute: Compute, name: str, size_gb: int, progress: lc.Progress = lc._quiet) -> str:
    """Make NAME-shared (once) in the cluster's zone and attach it read-only to every node that
    lacks it: GCE lets any number of VMs read one disk, as long as none writes to it."""
    deadline = compute.new_deadline(lc.CREATE_TIMEOUT, f"the shared disk of {name}")
    found = require(compute, name, deadline)
    disk = rq.shared_disk_name(name)
    compute.clients_for(["disks.insert", "instances.attachDisk"])
    if compute.get_or_none(f"{rq.zone_path(compute.project, found.zone)}/disks/{disk}", deadline) is None:
        progress(f"Creating the shared data disk {disk} ({size_gb} GB) in {found.zone}...")
        compute.run(rq.shared_disk_insert(compute.project, found.zone, name, size_gb), deadline)
    todo = [n for n in found.nodes if not _has_shared(n, name)]
    _each(todo, lambda n: compute.run(rq.attach_disk(compute.project, n.zone, n.name, disk, read_only=True), deadline))
    return disk


def fill_shared(compute: Compute, name: str, fill: Callable[[Instance], Any],
                prepare: Callable[[list[Instance], str], None], progress: lc.Progress = lc._quiet) -> Any:
    """Fill NAME-shared once: off every node, read-write on node 0 for ``fill(node0)``, then
    read-only on every node again, whatever ``fill`` did. ``prepare(nodes, step)`` runs on the
    nodes themselves: "unmount", "rw" (format a blank disk, mount it writable), "ro"."""
    deadline = compute.new_deadline(lc.CREATE_TIMEOUT, f"the shared disk of {name}")
    found = require(compute, name, deadline)
    disk = rq.shared_disk_name(name)
    if compute.get_or_none(f"{rq.zone_path(compute.project, found.zone)}/disks/{disk}", deadline) is None:
        raise NotFound(f"Cluster {name} has no shared disk.", fix=f"Add one with: gcpdl up {name} --nodes {found.size} --shared GB")
    compute.clients_for(["instances.attachDisk", "instances.detachDisk"])
    project, head = compute.project, found.head
    attached = [n for n in found.nodes if _has_shared(n, name)]
    progress(f"Taking {disk} off the {len(attached)} node(s) that read it, to fill it from {head.name}...")
    prepare(attached, "unmount")
    _each(attached, lambda n: compute.run(rq.detach_disk(project, n.zone, n.name), deadline))
    compute.run(rq.attach_disk(project, head.zone, head.name, disk, read_only=False), deadline)
    try:
        prepare([head], "rw")
        return fill(head)
    finally:
        progress(f"Attaching {disk} read-only to every node of {name} again...")
        prepare([head], "unmount")
        compute.run(rq.detach_disk(project, head.zone, head.name), deadline)
        _each(found.nodes, lambda n: compute.run(rq.attach_disk(project, n.zone, n.name, disk, read_only=True), deadline))
        prepare(found.nodes, "ro")
