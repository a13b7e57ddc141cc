"""Request builders: every Compute mutation gcpdl makes, as plain ``ApiCall`` values.

The dry-run prints these and the real run sends these same objects (``adapter.execute``), so the
plan is exactly what goes over the wire. Bodies are the REST JSON (camelCase, int64 as strings),
the shape the discovery document describes.
"""

from __future__ import annotations

import hashlib
import time
from typing import Callable

from gcpdl.compute.model import ApiCall
from gcpdl.spec import SSH_SCOPE, VmSpec

API = "/compute/v1"
DEFAULT_NETWORK = "default"
WORLD = "0.0.0.0/0"
# VPC firewall rules: the lowest priority number that matches wins, and at equal priority a deny
# beats an allow. gcpdl's allow (the caller's /32) sits at 1000, the per-VM deny (everyone else)
# at 2000: above the allow, and well below the default network's default-allow-ssh (65534), so
# the deny shuts that rule for gcpdl's VMs. The gap 1001-1999 is room for allow rules that must
# still outrank the deny (an intra-cluster rule for --nodes), without renumbering this one.
ALLOW_PRIORITY = 1000
DENY_PRIORITY = 2000
RUNLOG_KEY = "gcpdl-runlog"
AUTOSTOP_KEY = "gcpdl-autostop"
RUNLOG_MAX_LINES = 200
SSH_USER = "gcpdl"


def _derived(prefix: str, name: str, suffix: str = "") -> str:
    """A resource name built from the VM name that still fits RFC 1035's 63 characters: long
    names are cut and made unique again with a short hash."""
    full = f"{prefix}{name}{suffix}"
    if len(full) <= 63:
        return full
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = 63 - len(prefix) - len(suffix) - 9
    return f"{prefix}{name[:keep].rstrip('-')}-{digest}{suffix}"


def network_tag(name: str) -> str:
    return _derived("gcpdl-", name)


def firewall_name(name: str) -> str:
    return _derived("gcpdl-ssh-", name)


def deny_rule_name(name: str) -> str:
    return _derived("gcpdl-deny-ssh-", name)


def network_url(project: str, network: str = DEFAULT_NETWORK) -> str:
    return f"projects/{project}/global/networks/{network}"


def subnet_url(project: str, region: str, subnet: str) -> str:
    return f"projects/{project}/regions/{region}/subnetworks/{subnet}"


def firewall_path(project: str, rule: str | None = None) -> str:
    base = f"{API}/projects/{project}/global/firewalls"
    return f"{base}/{rule}" if rule else base


def zone_path(project: str, zone: str) -> str:
    return f"{API}/projects/{project}/zones/{zone}"


def instances_path(project: str, zone: str) -> str:
    return f"{zone_path(project, zone)}/instances"


def runlog_append(existing: str | None, event: str, now: float) -> str:
    """Append ``start|stop <unix-seconds>`` to the run log, keeping the last 200 lines."""
    lines = [line for line in (existing or "").splitlines() if line.strip()]
    lines.append(f"{event} {int(now)}")
    lines = lines[-RUNLOG_MAX_LINES:]
    # a trimmed log must not open with a stop whose start was cut: cost pairs start->stop
    while len(lines) > 1 and lines[0].startswith("stop"):
        lines.pop(0)
    return "\n".join(lines)


def labels_for(spec: VmSpec) -> dict[str, str]:
    return {
        "gcpdl": "managed",
        "gcpdl-gpu": spec.gpu or "none",
        "gcpdl-gpu-count": str(spec.gpu_count),
        "gcpdl-spot": "true" if spec.spot else "false",
    }


def instance_body(
    project: str,
    zone: str,
    spec: VmSpec,
    *,
    ssh_keys: str,
    startup_script: str,
    now: float,
    subnet: str | None = None,
) -> dict:
    """``subnet``: the subnetwork in the zone's region (custom-mode networks need one; auto-mode
    networks pick the region's own when it is left out)."""
    zone_url = f"projects/{project}/zones/{zone}"
    items = []
    if spec.gpu:
        items.append({"key": "install-nvidia-driver", "value": "True"})
    items += [
        {"key": "enable-guest-attributes", "value": "TRUE"},
        # no ssh-keys with OS Login (ssh_keys ""): the key is in the caller's OS Login profile
        *([{"key": "ssh-keys", "value": ssh_keys}] if ssh_keys else []),
        {"key": "startup-script", "value": startup_script},
        {"key": AUTOSTOP_KEY, "value": str(spec.autostop_minutes) if spec.autostop_minutes else "off"},
        {"key": RUNLOG_KEY, "value": runlog_append(None, "start", now)},
    ]
    disks: list[dict] = [
        {
            "boot": True,
            "autoDelete": True,
            "deviceName": "boot",
            "type": "PERSISTENT",
            "mode": "READ_WRITE",
            "initializeParams": {
                "sourceImage": f"projects/{spec.image_project}/global/images/family/{spec.image_family}",
                "diskSizeGb": str(spec.disk_gb),
                "diskType": f"{zone_url}/diskTypes/{spec.disk_type}",
            },
        }
    ]
    if spec.data_disk_gb:
        # autoDelete false: the dataset outlives `down` unless --delete-data says otherwise.
        disks.append(
            {
                "boot": False,
                "autoDelete": False,
                "deviceName": "data",
                "type": "PERSISTENT",
                "mode": "READ_WRITE",
                "source": f"{zone_url}/disks/{spec.data_disk_name}",
            }
        )
    disks += local_ssd_disks(zone_url, spec)
    scheduling: dict = {}
    if spec.gpu:
        # GPUs cannot live-migrate: the API refuses a GPU VM without TERMINATE.
        scheduling["onHostMaintenance"] = "TERMINATE"
        scheduling["automaticRestart"] = not spec.spot
    if spec.spot:
        # STOP, not DELETE: a preempted VM keeps its disk and can be started again.
        scheduling.update(provisioningModel="SPOT", instanceTerminationAction="STOP", automaticRestart=False)
    if spec.max_hours:
        scheduling["maxRunDuration"] = {"seconds": str(int(spec.max_hours * 3600))}
        scheduling["instanceTerminationAction"] = "STOP"
    body: dict = {
        "name": spec.name,
        "machineType": f"{zone_url}/machineTypes/{spec.machine_type}",
        "labels": labels_for(spec),
        "tags": {"items": [network_tag(spec.name)]},
        "metadata": {"items": items},
        "disks": disks,
        "networkInterfaces": [
            {
                "network": network_url(project, spec.network),
                **({"subnetwork": subnet_url(project, zone.rsplit("-", 1)[0], subnet)} if subnet else {}),
                "accessConfigs": [{"name": "External NAT", "type": "ONE_TO_ONE_NAT", "networkTier": "PREMIUM"}],
            }
        ],
        # read-only storage scope: `gcpdl sync` runs on the VM and reads gs:// with it
        "serviceAccounts": [{"email": "default", "scopes": [SSH_SCOPE]}],
    }
    if spec.attached_gpu:
        body["guestAccelerators"] = [
            {"acceleratorType": f"{zone_url}/acceleratorTypes/{spec.accelerator}", "acceleratorCount": spec.gpu_count}
        ]
    if scheduling:
        body["scheduling"] = scheduling
    return body


def local_ssd_disks(zone_url: str, spec: VmSpec) -> list[dict]:
    """SCRATCH disks for --local-ssd: 375 GB NVMe devices (none to list where the machine type
    brings its own, as A2 Ultra and A3 do). The startup script stripes them at /scratch."""
    from gcpdl.disks import local_ssd_bundled

    if not spec.local_ssd or local_ssd_bundled(spec.machine_type):
        return []
    return [
        {
            "type": "SCRATCH",
            "autoDelete": True,
            "deviceName": f"local-ssd-{i}",
            "interface": "NVME",
            "mode": "READ_WRITE",
            "initializeParams": {"diskType": f"{zone_url}/diskTypes/local-ssd", "diskSizeGb": "375"},
        }
        for i in range(spec.local_ssd)
    ]


def instance_insert(project: str, zone: str, body: dict) -> ApiCall:
    return ApiCall("instances.insert", "POST", instances_path(project, zone), body, project, zone, body["name"])


def data_disk_insert(project: str, zone: str, spec: VmSpec) -> ApiCall:
    body: dict = {
        "name": spec.data_disk_name,
        "sizeGb": str(spec.data_disk_gb),
        "type": f"projects/{project}/zones/{zone}/diskTypes/{spec.data_disk_type}",
        "labels": {"gcpdl": "managed", "gcpdl-vm": spec.name},
    }
    if spec.data_disk_throughput:
        # Hyperdisk Balanced: MiB/s (int64, a string in REST JSON); IOPS keep their default
        body["provisionedThroughput"] = str(spec.data_disk_throughput)
    return ApiCall("disks.insert", "POST", f"{zone_path(project, zone)}/disks", body, project, zone, spec.data_disk_name)


def firewall_body(project: str, name: str, source: str, network: str = DEFAULT_NETWORK) -> dict:
    return {
        "name": firewall_name(name),
        "description": f"gcpdl: SSH to {name} from {source} only",
        "network": network_url(project, network),
        "direction": "INGRESS",
        "priority": ALLOW_PRIORITY,
        "allowed": [{"IPProtocol": "tcp", "ports": ["22"]}],
        "sourceRanges": [source],
        "targetTags": [network_tag(name)],
    }


def firewall_insert(project: str, name: str, source: str, network: str = DEFAULT_NETWORK) -> ApiCall:
    body = firewall_body(project, name, source, network)
    return ApiCall("firewalls.insert", "POST", firewall_path(project), body, project, None, body["name"])


def firewall_patch(project: str, name: str, source: str) -> ApiCall:
    rule = firewall_name(name)
    body = {"sourceRanges": [source], "description": f"gcpdl: SSH to {name} from {source} only"}
    return ApiCall("firewalls.patch", "PATCH", firewall_path(project, rule), body, project, None, rule)


def firewall_delete(project: str, name: str) -> ApiCall:
    return rule_delete(project, firewall_name(name))


def deny_body(project: str, name: str, network: str = DEFAULT_NETWORK) -> dict:
    """tcp:22 from everyone to this VM's tag, below gcpdl's allow: shuts default-allow-ssh (and
    any other wide SSH rule of lower precedence) for this VM."""
    return {
        "name": deny_rule_name(name),
        "description": f"gcpdl: no SSH to {name} except through {firewall_name(name)}",
        "network": network_url(project, network),
        "direction": "INGRESS",
        "priority": DENY_PRIORITY,
        "denied": [{"IPProtocol": "tcp", "ports": ["22"]}],
        "sourceRanges": [WORLD],
        "targetTags": [network_tag(name)],
    }


# the fields of the deny rule that make it what it is (checked on an existing rule, restored by a patch)
DENY_FIELDS = ("direction", "priority", "denied", "sourceRanges", "targetTags")


def deny_insert(project: str, name: str, network: str = DEFAULT_NETWORK) -> ApiCall:
    body = deny_body(project, name, network)
    return ApiCall("firewalls.insert", "POST", firewall_path(project), body, project, None, body["name"])


def deny_patch(project: str, name: str) -> ApiCall:
    full = deny_body(project, name)
    body = {k: full[k] for k in ("description", *DENY_FIELDS)}
    return ApiCall("firewalls.patch", "PATCH", firewall_path(project, full["name"]), body, project, None, full["name"])


def deny_delete(project: str, name: str) -> ApiCall:
    return rule_delete(project, deny_rule_name(name))


def rule_delete(project: str, rule: str) -> ApiCall:
    return ApiCall("firewalls.delete", "DELETE", firewall_path(project, rule), None, project, None, rule)


def _instance_action(kind: str, verb: str, project: str, zone: str, name: str) -> ApiCall:
    return ApiCall(kind, "POST", f"{instances_path(project, zone)}/{name}/{verb}", None, project, zone, name)


def instance_start(project: str, zone: str, name: str) -> ApiCall:
    return _instance_action("instances.start", "start", project, zone, name)


def instance_stop(project: str, zone: str, name: str) -> ApiCall:
    # discardLocalSsd is required for a VM with local SSDs (discovery document, instances.stop);
    # gcpdl's promise is that they are wiped on a stop, and a VM without them ignores it
    return ApiCall("instances.stop", "POST", f"{instances_path(project, zone)}/{name}/stop", None, project, zone, name,
                   {"discardLocalSsd": "true"})


def instance_delete(project: str, zone: str, name: str) -> ApiCall:
    return ApiCall("instances.delete", "DELETE", f"{instances_path(project, zone)}/{name}", None, project, zone, name)


def disk_delete(project: str, zone: str, disk: str) -> ApiCall:
    return ApiCall("disks.delete", "DELETE", f"{zone_path(project, zone)}/disks/{disk}", None, project, zone, disk)


def set_metadata(project: str, zone: str, name: str, items: dict[str, str], fingerprint: str | None) -> ApiCall:
    body: dict = {"items": [{"key": k, "value": v} for k, v in items.items()]}
    if fingerprint:
        body["fingerprint"] = fingerprint
    return ApiCall("instances.setMetadata", "POST", f"{instances_path(project, zone)}/{name}/setMetadata", body, project, zone, name)


def plan_create(
    project: str,
    zone: str,
    spec: VmSpec,
    ssh_source: str,
    *,
    ssh_keys: str,
    startup_script: str,
    now: Callable[[], float] = time.time,
    subnet: str | None = None,
) -> list[ApiCall]:
    """The requests that create a VM from nothing: the SSH allow rule, the deny rule for
    everyone else (done before the instance exists), data disk, instance."""
    calls = [firewall_insert(project, spec.name, ssh_source, spec.network), deny_insert(project, spec.name, spec.network)]
    if spec.data_disk_gb:
        calls.append(data_disk_insert(project, zone, spec))
    body = instance_body(project, zone, spec, ssh_keys=ssh_keys, startup_script=startup_script, now=now(), subnet=subnet)
    calls.append(instance_insert(project, zone, body))
    return calls


# --- clusters (`up NAME --nodes N`) --------------------------------------------------------
# The intra-cluster allow rule must outrank the per-cluster SSH deny (DENY_PRIORITY): the deny's
# 0.0.0.0/0 also matches the nodes' internal addresses, and at equal priority a deny wins.
INTRA_PRIORITY = 1500
CLUSTER_LABEL = "gcpdl-cluster"
NODE_LABEL = "gcpdl-node"
NODES_LABEL = "gcpdl-nodes"
CLUSTER_PEERS_KEY = "gcpdl-cluster-peers"  # instance attribute: the other nodes' names
# Machine families that take a compact (COLLOCATED) placement policy; N1 and E2 allow only spread
# placement (https://cloud.google.com/compute/docs/instances/use-compact-placement-policies).
COMPACT_FAMILIES = frozenset({"a2", "a3", "a4", "c2", "c2d", "c3", "c3d", "c4", "g2", "h3", "n2", "n2d"})


def intra_rule_name(cluster: str) -> str:
    return _derived("gcpdl-intra-", cluster)


def placement_policy_name(cluster: str) -> str:
    return _derived("gcpdl-place-", cluster)


def region_path(project: str, region: str) -> str:
    return f"{API}/projects/{project}/regions/{region}"


def policy_url(project: str, region: str, policy: str) -> str:
    return f"projects/{project}/regions/{region}/resourcePolicies/{policy}"


def supports_compact(machine_type: str) -> bool:
    return machine_type.split("-", 1)[0] in COMPACT_FAMILIES


def intra_body(project: str, cluster: str, network: str = DEFAULT_NETWORK) -> dict:
    """All traffic between this cluster's nodes, and only theirs: sourceTags and targetTags are
    the cluster's tag. No sourceRanges: GCE ORs them with sourceTags, which would widen the rule."""
    tag = network_tag(cluster)
    return {
        "name": intra_rule_name(cluster),
        "description": f"gcpdl: traffic between the nodes of cluster {cluster} only",
        "network": network_url(project, network),
        "direction": "INGRESS",
        "priority": INTRA_PRIORITY,
        "allowed": [{"IPProtocol": "all"}],
        "sourceTags": [tag],
        "targetTags": [tag],
    }


def intra_insert(project: str, cluster: str, network: str = DEFAULT_NETWORK) -> ApiCall:
    body = intra_body(project, cluster, network)
    return ApiCall("firewalls.insert", "POST", firewall_path(project), body, project, None, body["name"])


def placement_body(cluster: str, region: str, nodes: int) -> dict:
    return {
        "name": placement_policy_name(cluster),
        "description": f"gcpdl: compact placement for cluster {cluster} ({nodes} nodes)",
        "region": region,
        "groupPlacementPolicy": {"collocation": "COLLOCATED"},
    }


def placement_insert(project: str, region: str, cluster: str, nodes: int) -> ApiCall:
    body = placement_body(cluster, region, nodes)
    return ApiCall("resourcePolicies.insert", "POST", f"{region_path(project, region)}/resourcePolicies", body, project,
                   None, body["name"], region=region)


def placement_delete(project: str, region: str, cluster: str) -> ApiCall:
    name = placement_policy_name(cluster)
    return ApiCall("resourcePolicies.delete", "DELETE", f"{region_path(project, region)}/resourcePolicies/{name}", None,
                   project, None, name, region=region)


def node_body(project: str, zone: str, spec: VmSpec, cluster: str, rank: int, nodes: int, policy: str | None, *,
              ssh_keys: str, startup_script: str, now: float, subnet: str | None = None) -> dict:
    """One node's instance body: a single VM's body (``spec.name`` is NAME-k) with the cluster's
    labels, the cluster's network tag (its SSH, deny and intra-cluster rules) instead of its own,
    and the placement policy when the family supports one."""
    body = instance_body(project, zone, spec, ssh_keys=ssh_keys, startup_script=startup_script, now=now, subnet=subnet)
    body["labels"].update({CLUSTER_LABEL: cluster, NODE_LABEL: str(rank), NODES_LABEL: str(nodes)})
    body["tags"] = {"items": [network_tag(cluster)]}
    # the autostop agent stops a node only once every node is idle (gcpdl/agent/peers.py)
    peers = ",".join(f"{cluster}-{k}" for k in range(nodes) if k != rank)
    if peers:
        body["metadata"]["items"].append({"key": CLUSTER_PEERS_KEY, "value": peers})
    if policy:
        body["resourcePolicies"] = [policy]
    return body


# --- --shared: one data disk, filled once, attached read-only to every node ---------------------
SHARED_DEVICE = "shared"  # /dev/disk/by-id/google-shared on each node


def shared_disk_name(cluster: str) -> str:
    return _derived("", cluster, "-shared")


def shared_disk_insert(project: str, zone: str, cluster: str, size_gb: int) -> ApiCall:
    body = {
        "name": shared_disk_name(cluster),
        "sizeGb": str(size_gb),
        "type": f"projects/{project}/zones/{zone}/diskTypes/pd-balanced",
        "labels": {"gcpdl": "managed", CLUSTER_LABEL: cluster},
        "description": f"gcpdl: the dataset of cluster {cluster}, attached read-only to every node",
    }
    return ApiCall("disks.insert", "POST", f"{zone_path(project, zone)}/disks", body, project, zone, body["name"])


def attach_disk(project: str, zone: str, instance: str, disk: str, read_only: bool) -> ApiCall:
    body = {"source": f"projects/{project}/zones/{zone}/disks/{disk}", "deviceName": SHARED_DEVICE,
            "mode": "READ_ONLY" if read_only else "READ_WRITE", "autoDelete": False}
    return ApiCall("instances.attachDisk", "POST", f"{instances_path(project, zone)}/{instance}/attachDisk", body, project,
                   zone, instance)


def detach_disk(project: str, zone: str, instance: str, device: str = SHARED_DEVICE) -> ApiCall:
    return ApiCall("instances.detachDisk", "POST", f"{instances_path(project, zone)}/{instance}/detachDisk", None, project,
                   zone, instance, {"deviceName": device})
