"""Firewalls (insert/get/list/patch/update/delete), the default network, and persistent disks
(insert/get/list/aggregatedList/delete). A mixin of FakeCompute."""

from __future__ import annotations

import copy
import re

from tests.fakes import compute_catalog as cat
from tests.fakes.compute_common import ApiError, Ctx, NAME_RE, check_labels, invalid_field, not_found, path_of, region_of


class DisksFirewallsMixin:
    # ---------------------------------------------------------------- firewalls / networks
    def _firewalls_insert(self, ctx: Ctx) -> tuple[int, dict]:
        project, body = ctx.project, ctx.body
        name = body.get("name", "")
        if not re.fullmatch(NAME_RE, name or ""):
            raise invalid_field("resource.name", name, f"Must be a match of regex '{NAME_RE}'")
        if name in self.firewalls_by_name:
            raise ApiError(409, f"The resource 'projects/{project}/global/firewalls/{name}' already exists", reason="alreadyExists")
        fw = self._firewall_body(project, name, body)
        self.firewalls_by_name[name] = fw
        op = self._new_op(project, ("global", None), "insert", fw)
        return self._op_response(op)

    def _firewall_body(self, project: str, name: str, body: dict, old: dict | None = None) -> dict:
        """The stored rule after an insert/patch/update, checked as the real API checks one:
        exactly one of allowed/denied, protocols and ports, priority 0-65535, real CIDRs, not both
        target tags and target service accounts, an existing network."""
        import ipaddress

        merged = dict(old or {})
        merged.update(body)
        allowed, denied = merged.get("allowed"), merged.get("denied")
        if bool(allowed) == bool(denied):
            raise ApiError(400, "Invalid value for field 'resource': ''. Exactly one of allowed or denied must be set.")
        key = "allowed" if allowed else "denied"
        for i, rule in enumerate(allowed or denied):
            proto = str(rule.get("IPProtocol", ""))
            if proto.lower() not in ("tcp", "udp", "icmp", "esp", "ah", "sctp", "ipip", "all") and not proto.isdigit():
                raise invalid_field(f"resource.{key}[{i}].IPProtocol", proto, "Invalid IP protocol.")
            if rule.get("ports") and proto.lower() not in ("tcp", "udp", "sctp"):
                raise invalid_field(f"resource.{key}[{i}].ports", rule["ports"], "Ports can only be given for tcp, udp or sctp.")
            for port in rule.get("ports", []):
                m = re.fullmatch(r"(\d{1,5})(?:-(\d{1,5}))?", port)
                if not m or int(m.group(1)) > 65535 or int(m.group(2) or m.group(1)) > 65535 or \
                        int(m.group(2) or m.group(1)) < int(m.group(1)):
                    raise invalid_field(f"resource.{key}[{i}].ports", port, "Must be a port number or a range.")
        priority = merged.get("priority", 1000)
        if not isinstance(priority, int) or not 0 <= priority <= 65535:
            raise invalid_field("resource.priority", priority, "Must be between 0 and 65535.")
        for field_name in ("sourceRanges", "destinationRanges"):
            for i, cidr in enumerate(body.get(field_name) or []):
                try:
                    ipaddress.ip_network(cidr, strict=False)
                except ValueError:
                    raise invalid_field(f"resource.{field_name}[{i}]", cidr, "Must be a valid IPV4 or IPV6 CIDR range.") from None
        if merged.get("targetTags") and merged.get("targetServiceAccounts"):
            raise ApiError(400, "Invalid value for field 'resource': ''. "
                                "targetTags and targetServiceAccounts cannot be set at the same time.")
        net = (body.get("network") or (old or {}).get("network") or "global/networks/default").rsplit("/", 1)[-1]
        if net not in self.networks:
            raise invalid_field("resource.network", body.get("network"), "The referenced network resource cannot be found.")
        fw = copy.deepcopy(old) if old else {
            "kind": "compute#firewall", "id": self._new_id(), "creationTimestamp": self._ts(), "name": name,
            "selfLink": self._link(project, "global", "firewalls", name), "priority": 1000, "direction": "INGRESS",
            "disabled": False, "logConfig": {"enable": False},
        }
        fw.update(copy.deepcopy(body))
        fw["network"] = self._link(project, "global", "networks", net)
        fw["name"], fw["selfLink"] = name, self._link(project, "global", "firewalls", name)
        if fw.get("direction", "INGRESS") == "INGRESS" and not fw.get("sourceRanges") and not fw.get("sourceTags"):
            fw["sourceRanges"] = ["0.0.0.0/0"]  # the real API's default for an ingress rule without sources
        return fw

    def _get_firewall(self, project: str, name: str) -> dict:
        fw = self.firewalls_by_name.get(name)
        if fw is None:
            raise not_found(f"projects/{project}/global/firewalls/{name}")
        return fw

    def _firewalls_get(self, ctx: Ctx) -> tuple[int, dict]:
        return 200, copy.deepcopy(self._get_firewall(ctx.project, ctx.params["firewall"]))

    def _firewalls_list(self, ctx: Ctx) -> tuple[int, dict]:
        items = [f for _, f in sorted(self.firewalls_by_name.items())]
        return self._list("compute#firewallList", items, ctx, self._link(ctx.project, "global", "firewalls"))

    def _firewalls_patch(self, ctx: Ctx) -> tuple[int, dict]:
        name = ctx.params["firewall"]
        old = self._get_firewall(ctx.project, name)
        if ctx.body.get("name") not in (None, name):
            raise invalid_field("resource.name", ctx.body["name"], "The name of a firewall cannot be changed.")
        body = dict(ctx.body)
        for key, other in (("allowed", "denied"), ("denied", "allowed")):
            if body.get(key) and other in old:  # a patch that sets one list replaces the other
                old = {k: v for k, v in old.items() if k != other}
        fw = self._firewall_body(ctx.project, name, body, old=old)
        self.firewalls_by_name[name] = fw
        op = self._new_op(ctx.project, ("global", None), "patch", fw)
        return self._op_response(op)

    def _firewalls_update(self, ctx: Ctx) -> tuple[int, dict]:
        name = ctx.params["firewall"]
        old = self._get_firewall(ctx.project, name)
        base = {k: old[k] for k in ("kind", "id", "creationTimestamp", "name", "selfLink")}
        fw = self._firewall_body(ctx.project, name, {"priority": 1000, "direction": "INGRESS", **ctx.body}, old=base)
        self.firewalls_by_name[name] = fw
        op = self._new_op(ctx.project, ("global", None), "update", fw)
        return self._op_response(op)

    def _firewalls_delete(self, ctx: Ctx) -> tuple[int, dict]:
        name = ctx.params["firewall"]
        fw = self._get_firewall(ctx.project, name)

        def done() -> None:
            self.firewalls_by_name.pop(name, None)

        op = self._new_op(ctx.project, ("global", None), "delete", fw, on_done=done)
        return self._op_response(op)

    # ---------------------------------------------------------------- networks and subnetworks
    # The project's VPC networks: name -> {"auto": bool}. An auto-mode network has one subnet per
    # region, named like the network; a custom-mode one has only those added with add_subnet.
    def add_network(self, name: str, auto: bool = True) -> None:
        with self._lock:
            self.networks[name] = {"auto": auto, "id": self._new_id()}

    def remove_network(self, name: str) -> None:
        """A project without this network (deleted, or never made: an organisation policy can
        skip the default network)."""
        with self._lock:
            self.networks.pop(name, None)
            self.subnets = {k: v for k, v in self.subnets.items() if v["network"] != name}
            self.firewalls_by_name = {k: v for k, v in self.firewalls_by_name.items()
                                      if v["network"].rsplit("/", 1)[-1] != name}

    def add_subnet(self, name: str, region: str, network: str, cidr: str = "10.10.0.0/24") -> None:
        with self._lock:
            self.subnets[(region, name)] = {"network": network, "cidr": cidr, "id": self._new_id()}

    def seed_default_rules(self) -> None:
        """The rules a project created with the default VPC carries (as `gcloud compute
        firewall-rules list` shows them on a new project)."""
        def rule(name: str, allowed: list, sources: list, priority: int = 65534) -> None:
            body = {"name": name, "network": "global/networks/default", "direction": "INGRESS", "priority": priority,
                    "allowed": allowed, "sourceRanges": sources, "description": f"{name} (default VPC)"}
            self.firewalls_by_name[name] = self._firewall_body(self.project, name, body)

        with self._lock:
            rule("default-allow-ssh", [{"IPProtocol": "tcp", "ports": ["22"]}], ["0.0.0.0/0"])
            rule("default-allow-rdp", [{"IPProtocol": "tcp", "ports": ["3389"]}], ["0.0.0.0/0"])
            rule("default-allow-icmp", [{"IPProtocol": "icmp"}], ["0.0.0.0/0"])
            rule("default-allow-internal", [{"IPProtocol": "tcp", "ports": ["0-65535"]}, {"IPProtocol": "udp", "ports": ["0-65535"]},
                                            {"IPProtocol": "icmp"}], ["10.128.0.0/9"])

    def _network_body(self, project: str, name: str) -> dict:
        net = self.networks[name]
        body = {"kind": "compute#network", "id": net["id"], "name": name, "autoCreateSubnetworks": net["auto"],
                "selfLink": self._link(project, "global", "networks", name), "creationTimestamp": "2026-01-01T00:00:00.000-08:00",
                "routingConfig": {"routingMode": "REGIONAL"}, "networkFirewallPolicyEnforcementOrder": "AFTER_CLASSIC_FIREWALL",
                "subnetworks": [self._link(project, "regions", r, "subnetworks", s) for r, s, _ in self._subnets_of(name)]}
        return body

    def _subnets_of(self, network: str) -> list[tuple[str, str, dict]]:
        """(region, name, data) of every subnet in ``network``."""
        net = self.networks.get(network)
        if net is None:
            return []
        if net["auto"]:
            return [(r, network, {"network": network, "cidr": f"10.{128 + i}.0.0/20", "id": str(5000 + i)})
                    for i, r in enumerate(sorted(cat.REGIONS))]
        return [(r, s, d) for (r, s), d in sorted(self.subnets.items()) if d["network"] == network]

    def _subnet_body(self, project: str, region: str, name: str, data: dict) -> dict:
        return {"kind": "compute#subnetwork", "id": data["id"], "name": name, "region": self._link(project, "regions", region),
                "network": self._link(project, "global", "networks", data["network"]), "ipCidrRange": data["cidr"],
                "gatewayAddress": data["cidr"].rsplit(".", 2)[0] + ".0.1", "stackType": "IPV4_ONLY",
                "privateIpGoogleAccess": False, "purpose": "PRIVATE",
                "selfLink": self._link(project, "regions", region, "subnetworks", name)}

    def _find_subnet(self, region: str, name: str) -> dict | None:
        for net in sorted(self.networks):
            for r, s, data in self._subnets_of(net):
                if r == region and s == name:
                    return data
        return None

    def _networks_get(self, ctx: Ctx) -> tuple[int, dict]:
        net = ctx.params["network"]
        if net not in self.networks:
            raise not_found(f"projects/{ctx.project}/global/networks/{net}")
        return 200, self._network_body(ctx.project, net)

    def _networks_list(self, ctx: Ctx) -> tuple[int, dict]:
        items = [self._network_body(ctx.project, n) for n in sorted(self.networks)]
        return self._list("compute#networkList", items, ctx, self._link(ctx.project, "global", "networks"))

    def _all_subnets(self, project: str) -> dict[str, list[dict]]:
        by_region: dict[str, list[dict]] = {}
        for net in sorted(self.networks):
            for r, s, data in self._subnets_of(net):
                by_region.setdefault(r, []).append(self._subnet_body(project, r, s, data))
        return by_region

    def _subnetworks_get(self, ctx: Ctx) -> tuple[int, dict]:
        region, name = ctx.params["region"], ctx.params["subnetwork"]
        data = self._find_subnet(region, name)
        if data is None:
            raise not_found(f"projects/{ctx.project}/regions/{region}/subnetworks/{name}")
        return 200, self._subnet_body(ctx.project, region, name, data)

    def _subnetworks_list(self, ctx: Ctx) -> tuple[int, dict]:
        region = ctx.params["region"]
        if region not in cat.REGIONS:
            raise not_found(f"projects/{ctx.project}/regions/{region}")
        items = self._all_subnets(ctx.project).get(region, [])
        return self._list("compute#subnetworkList", items, ctx, self._link(ctx.project, "regions", region, "subnetworks"))

    def _nic_network(self, project: str, zone: str, nic: dict, index: int) -> tuple[str, str]:
        """The (network, subnetwork) an instance's interface lands in, checked as the real API
        does: the network must exist; a custom-mode network needs a subnetwork in the zone's
        region; a given subnetwork must be in that region and that network."""
        region = region_of(zone)
        net = (nic.get("network") or "").rsplit("/", 1)[-1] or None
        sub_ref = nic.get("subnetwork")
        if sub_ref:
            m = re.fullmatch(r"(?:https?://[^/]+/compute/v1/)?(?:projects/[^/]+/)?regions/([^/]+)/subnetworks/([^/]+)", sub_ref)
            if not m:
                raise invalid_field(f"resource.networkInterfaces[{index}].subnetwork", sub_ref, "Invalid subnetwork reference.")
            if m.group(1) != region:
                raise ApiError(400, f"Invalid value for field 'resource.networkInterfaces[{index}].subnetwork': '{sub_ref}'. "
                                    f"Subnetwork must be in the same region as the instance ({region}).")
            data = self._find_subnet(region, m.group(2))
            if data is None:
                raise ApiError(404, f"The resource 'projects/{project}/regions/{region}/subnetworks/{m.group(2)}' was not found",
                               reason="notFound")
            if net and net != data["network"]:
                raise ApiError(400, f"Invalid value for field 'resource.networkInterfaces[{index}].subnetwork': '{sub_ref}'. "
                                    f"Subnetwork does not belong to network '{net}'.")
            return data["network"], m.group(2)
        net = net or "default"
        if net not in self.networks:
            raise ApiError(404, f"The resource 'projects/{project}/global/networks/{net}' was not found", reason="notFound")
        if not self.networks[net]["auto"]:
            raise ApiError(400, f"Invalid value for field 'resource.networkInterfaces[{index}].subnetwork': ''. "
                                f"Subnetwork should be specified for custom subnetmode network")
        return net, net

    # ---------------------------------------------------------------- VPC firewall evaluation
    def reachable(self, instance: str, source_ip: str, port: int = 22, protocol: str = "tcp") -> bool:
        """Would VPC let a packet from ``source_ip`` to ``protocol:port`` reach ``instance``?
        Evaluated as VPC firewall rules are: of the enabled INGRESS rules in the instance's
        network that target it and match the packet, the lowest priority number wins, and at equal
        priority a deny beats an allow; with none, the implied deny-all ingress applies."""
        import ipaddress

        with self._lock:
            inst = next((i for (_, n), i in self.instances_by_key.items() if n == instance), None)
            if inst is None:
                raise KeyError(instance)
            tags = set((inst.get("tags") or {}).get("items") or [])
            network = inst["networkInterfaces"][0]["network"].rsplit("/", 1)[-1]
            addr = ipaddress.ip_address(source_ip)
            matches = []
            for fw in self.firewalls_by_name.values():
                if fw.get("disabled") or fw.get("direction", "INGRESS") != "INGRESS":
                    continue
                if fw["network"].rsplit("/", 1)[-1] != network:
                    continue
                if fw.get("targetTags") and not tags & set(fw["targetTags"]):
                    continue
                if fw.get("targetServiceAccounts"):
                    continue  # gcpdl's VMs run as the default service account; no such rule here targets it
                if not any(addr in ipaddress.ip_network(c, strict=False) for c in fw.get("sourceRanges") or []):
                    continue
                deny = bool(fw.get("denied"))
                if any(_matches(r, protocol, port) for r in (fw.get("denied") or fw.get("allowed") or [])):
                    matches.append((int(fw.get("priority", 1000)), 0 if deny else 1, fw["name"]))
            if not matches:
                return False
            return min(matches)[1] == 1

    # ---------------------------------------------------------------- disks
    def _disks_insert(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, body = ctx.project, ctx.params["zone"], ctx.body
        self._check_zone(project, zone)
        name = body.get("name", "")
        if not re.fullmatch(NAME_RE, name or ""):
            raise invalid_field("resource.name", name, f"Must be a match of regex '{NAME_RE}'")
        if (zone, name) in self.disks_by_key:
            raise ApiError(409, f"The resource 'projects/{project}/zones/{zone}/disks/{name}' already exists", reason="alreadyExists")
        check_labels(body.get("labels"), "resource.labels")
        dtype = (body.get("type") or "pd-standard")
        m = re.fullmatch(r"(?:https?://[^/]+/compute/v1/)?(?:projects/[^/]+/)?zones/([^/]+)/diskTypes/([^/]+)", dtype)
        if body.get("type") and (not m or m.group(1) != zone or m.group(2) not in cat.DISK_TYPES):
            raise invalid_field("resource.type", dtype, "The referenced diskType resource cannot be found.")
        dtype = m.group(2) if m else "pd-standard"
        size = body.get("sizeGb")
        img_gb = None
        if body.get("sourceImage"):
            _, _, img_gb = self._image(body["sourceImage"])
            if size is not None and int(size) < img_gb:
                raise invalid_field("resource.sizeGb", size, f"Requested disk size cannot be smaller than the image size ({img_gb} GB)")
        size_gb = int(size) if size is not None else (img_gb or 500)
        if size_gb < 10:
            raise invalid_field("resource.sizeGb", size, "Disk size cannot be smaller than 10 GB.")
        disk = self._make_disk(project, zone, name, size_gb, dtype, body.get("sourceImage"), body.get("labels"))
        if body.get("description"):
            disk["description"] = body["description"]
        disk["status"] = "CREATING"
        self.disks_by_key[(zone, name)] = disk

        def done() -> None:
            disk["status"] = "READY"

        op = self._new_op(project, ("zones", zone), "insert", disk, on_done=done)
        return self._op_response(op)

    def _get_disk(self, project: str, zone: str, name: str) -> dict:
        disk = self.disks_by_key.get((zone, name))
        if disk is None:
            raise not_found(f"projects/{project}/zones/{zone}/disks/{name}")
        return disk

    def _disks_get(self, ctx: Ctx) -> tuple[int, dict]:
        return 200, copy.deepcopy(self._get_disk(ctx.project, ctx.params["zone"], ctx.params["disk"]))

    def _disks_list(self, ctx: Ctx) -> tuple[int, dict]:
        zone = ctx.params["zone"]
        self._check_zone(ctx.project, zone)
        items = [d for (z, _), d in sorted(self.disks_by_key.items()) if z == zone]
        return self._list("compute#diskList", items, ctx, self._link(ctx.project, "zones", zone, "disks"))

    def _disks_aggregated(self, ctx: Ctx) -> tuple[int, dict]:
        by_zone: dict[str, list[dict]] = {}
        for (z, _), d in sorted(self.disks_by_key.items()):
            by_zone.setdefault(z, []).append(d)
        return self._aggregated("compute#diskAggregatedList", "disks", by_zone, ctx, "disks")

    def _disks_delete(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, name = ctx.project, ctx.params["zone"], ctx.params["disk"]
        disk = self._get_disk(project, zone, name)
        if disk.get("users"):
            raise ApiError(400, f"The disk resource '{path_of(disk['selfLink'])}' is already being used by "
                                f"'{path_of(disk['users'][0])}'", reason="resourceInUseByAnotherResource")
        disk["status"] = "DELETING"

        def done() -> None:
            self.disks_by_key.pop((zone, name), None)

        op = self._new_op(project, ("zones", zone), "delete", disk, on_done=done)
        return self._op_response(op)


def _matches(rule: dict, protocol: str, port: int) -> bool:
    """Does one allowed/denied entry cover ``protocol:port``? No ports: every port."""
    proto = str(rule.get("IPProtocol", "")).lower()
    if proto not in (protocol, "all"):
        return False
    ports = rule.get("ports") or []
    if not ports:
        return True
    for p in ports:
        lo, _, hi = p.partition("-")
        if int(lo) <= port <= int(hi or lo):
            return True
    return False
