"""Resource policies (regional): group placement policies, as the real API checks them.

- insert/get/list/delete under projects/P/regions/R/resourcePolicies; bodies are validated against
  the discovery document's ResourcePolicy schema by the dispatcher, the rules here are the API's:
  one policy type per resource, a compact (COLLOCATED) policy takes no availabilityDomainCount,
  a spread policy's availabilityDomainCount is 1-8, deletion is refused while a VM uses it.
- an instance insert naming a policy: it must exist, be in the instance's region, and a compact
  one needs a machine family that supports compact placement (not N1 or E2: spread only).
A mixin of FakeCompute: ``self`` is the fake and its state (``self.resource_policies``).
"""

from __future__ import annotations

import copy
import re

from tests.fakes.compute_common import NAME_RE, ApiError, Ctx, invalid_field, not_found, region_of

# families whose VMs take a COLLOCATED policy (https://cloud.google.com/compute/docs/instances/use-compact-placement-policies)
COMPACT_FAMILIES = {"a2", "a3", "a4", "c2", "c2d", "c3", "c3d", "c4", "g2", "h3", "n2", "n2d"}
POLICY_TYPES = ("groupPlacementPolicy", "snapshotSchedulePolicy", "instanceSchedulePolicy", "diskConsistencyGroupPolicy",
                "workloadPolicy")
_POLICY_REF = re.compile(r"(?:https?://[^/]+/compute/v1/)?(?:projects/([^/]+)/)?regions/([^/]+)/resourcePolicies/([^/]+)")


class PoliciesMixin:
    def _policies_insert(self, ctx: Ctx) -> tuple[int, dict]:
        project, region, body = ctx.project, ctx.params["region"], ctx.body
        self._check_region(region)
        name = body.get("name", "")
        if not re.fullmatch(NAME_RE, name or ""):
            raise invalid_field("resource.name", name, f"Must be a match of regex '{NAME_RE}'")
        if (region, name) in self.resource_policies:
            raise ApiError(409, f"The resource 'projects/{project}/regions/{region}/resourcePolicies/{name}' already exists",
                           reason="alreadyExists")
        kinds = [k for k in POLICY_TYPES if body.get(k)]
        if len(kinds) != 1:
            raise ApiError(400, "Invalid value for field 'resource': ''. Exactly one policy type must be specified.")
        gpp = body.get("groupPlacementPolicy") or {}
        if gpp:
            if gpp.get("collocation") == "COLLOCATED" and gpp.get("availabilityDomainCount") is not None:
                raise invalid_field("resource.groupPlacementPolicy.availabilityDomainCount", gpp["availabilityDomainCount"],
                                    "Availability domain count cannot be set for a collocated placement policy.")
            adc = gpp.get("availabilityDomainCount")
            if adc is not None and not 1 <= int(adc) <= 8:
                raise invalid_field("resource.groupPlacementPolicy.availabilityDomainCount", adc, "Must be between 1 and 8.")
            if gpp.get("vmCount") is not None and not 1 <= int(gpp["vmCount"]) <= 1500:
                raise invalid_field("resource.groupPlacementPolicy.vmCount", gpp["vmCount"], "Must be between 1 and 1500.")
        if body.get("region") and body["region"].rsplit("/", 1)[-1] != region:
            raise invalid_field("resource.region", body["region"], f"Must be the region of the request ({region}).")
        policy = copy.deepcopy(body)
        policy.update(kind="compute#resourcePolicy", id=self._new_id(), creationTimestamp=self._ts(), status="READY",
                      region=self._link(project, "regions", region),
                      selfLink=self._link(project, "regions", region, "resourcePolicies", name))
        self.resource_policies[(region, name)] = policy
        op = self._new_op(project, ("regions", region), "insert", policy)
        return self._op_response(op)

    def _policies_get(self, ctx: Ctx) -> tuple[int, dict]:
        return 200, copy.deepcopy(self._get_policy(ctx.project, ctx.params["region"], ctx.params["resourcePolicy"]))

    def _policies_list(self, ctx: Ctx) -> tuple[int, dict]:
        region = ctx.params["region"]
        items = [copy.deepcopy(p) for (r, _), p in sorted(self.resource_policies.items()) if r == region]
        return 200, {"kind": "compute#resourcePolicyList", "items": items,
                     "selfLink": self._link(ctx.project, "regions", region, "resourcePolicies")}

    def _policies_delete(self, ctx: Ctx) -> tuple[int, dict]:
        project, region, name = ctx.project, ctx.params["region"], ctx.params["resourcePolicy"]
        policy = self._get_policy(project, region, name)
        users = self._policy_users(policy)
        if users:
            raise ApiError(400, f"The resource_policy resource '{policy['selfLink'].split('/compute/v1/', 1)[-1]}' is already "
                                f"being used by '{users[0]}'", reason="resourceInUseByAnotherResource")
        del self.resource_policies[(region, name)]
        op = self._new_op(project, ("regions", region), "delete", policy)
        return self._op_response(op)

    def _get_policy(self, project: str, region: str, name: str) -> dict:
        policy = self.resource_policies.get((region, name))
        if policy is None:
            raise not_found(f"projects/{project}/regions/{region}/resourcePolicies/{name}")
        return policy

    def _policy_users(self, policy: dict) -> list[str]:
        key = policy["selfLink"].split("/regions/", 1)[-1]  # REGION/resourcePolicies/NAME
        return [f"projects/{self.project}/zones/{zone}/instances/{name}" for (zone, name), inst in sorted(self.instances_by_key.items())
                if any(ref.endswith(key) for ref in inst.get("resourcePolicies") or [])]

    def _check_instance_policies(self, project: str, zone: str, machine_type: str, refs: list[str]) -> list[str]:
        """An instance insert's resourcePolicies: resolved to full links, or the API's 400/404."""
        out = []
        for i, ref in enumerate(refs):
            m = _POLICY_REF.fullmatch(ref or "")
            fld = f"resource.resourcePolicies[{i}]"
            if not m:
                raise invalid_field(fld, ref, "Must be a URL to a valid Compute resource of the correct type.")
            _, region, name = m.groups()
            if region != region_of(zone):
                raise invalid_field(fld, ref, f"Resource policy must be in the same region as the instance ({region_of(zone)}).")
            policy = self.resource_policies.get((region, name))
            if policy is None:
                raise not_found(f"projects/{project}/regions/{region}/resourcePolicies/{name}")
            gpp = policy.get("groupPlacementPolicy") or {}
            family = machine_type.split("-", 1)[0]
            if gpp.get("collocation") == "COLLOCATED" and family not in COMPACT_FAMILIES:
                raise ApiError(400, f"Invalid value for field '{fld}': '{ref}'. Compact placement policies are not supported "
                                    f"for machine type {machine_type}.", reason="invalid")
            vm_count = gpp.get("vmCount")
            if vm_count is not None and len(self._policy_users(policy)) >= int(vm_count):
                raise ApiError(400, f"Invalid value for field '{fld}': '{ref}'. The placement policy already holds {vm_count} VMs.")
            out.append(policy["selfLink"])
        return out

    def _check_region(self, region: str) -> None:
        from tests.fakes import compute_catalog as cat

        if region not in cat.REGIONS:
            raise ApiError(400, f"Invalid value for field 'region': '{region}'. Unknown region.")
