"""Firewalls (insert/get/list/patch/update/delete), the default network, and persistent disks
(insert/get/list/aggregatedList/delete). A mixin of FakeCompute."""

from __future__ import annotations

import copy
import re

from tests.fakes import compute_catalog as cat
from tests.fakes.compute_common import ApiError, Ctx, NAME_RE, check_labels, invalid_field, not_found, path_of


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
        if body.get("allowed") and body.get("denied"):
            raise ApiError(400, "Invalid value for field 'resource': ''. Exactly one of allowed or denied must be set.")
        for i, rule in enumerate(body.get("allowed") or body.get("denied") or []):
            for port in rule.get("ports", []):
                if not re.fullmatch(r"\d{1,5}(-\d{1,5})?", port):
                    raise invalid_field(f"resource.allowed[{i}].ports", port, "Must be a port number or a range.")
        for i, cidr in enumerate(body.get("sourceRanges") or []):
            if not re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}(/\d{1,2})?|[0-9a-fA-F:]+(/\d{1,3})?", cidr):
                raise invalid_field(f"resource.sourceRanges[{i}]", cidr, "Must be a valid IPV4 or IPV6 CIDR range.")
        net = (body.get("network") or (old or {}).get("network") or "global/networks/default").rsplit("/", 1)[-1]
        if net != "default":
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
        if "allowed" in body:
            old = dict(old, denied=None)
            old.pop("denied")
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

    def _networks_get(self, ctx: Ctx) -> tuple[int, dict]:
        net = ctx.params["network"]
        if net != "default":
            raise not_found(f"projects/{ctx.project}/global/networks/{net}")
        return 200, {"kind": "compute#network", "id": "1000000000000000001", "name": "default", "autoCreateSubnetworks": True,
                     "selfLink": self._link(ctx.project, "global", "networks", "default"),
                     "routingConfig": {"routingMode": "REGIONAL"}, "networkFirewallPolicyEnforcementOrder": "AFTER_CLASSIC_FIREWALL"}

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
