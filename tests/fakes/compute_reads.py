"""Read-only catalogue (accelerator types, machine types, images, zones, regions and project with
their quotas) and the list machinery every list shares: filter, pages, aggregated scopes."""

from __future__ import annotations

import copy
import re
from typing import Any

from tests.fakes import compute_catalog as cat
from tests.fakes.compute_common import LINK, ApiError, Ctx, all_zones, not_found, region_of


class ReadsMixin:
    # ---------------------------------------------------------------- catalogue reads
    def _accel_body(self, project: str, zone: str, atype: str) -> dict:
        desc, maximum, _ = cat.ACCELERATORS[atype]
        return {"kind": "compute#acceleratorType", "id": str(10000 + sorted(cat.ACCELERATORS).index(atype)),
                "creationTimestamp": "1969-12-31T16:00:00.000-08:00", "name": atype, "description": desc,
                "zone": self._link(project, "zones", zone), "maximumCardsPerInstance": maximum,
                "selfLink": self._link(project, "zones", zone, "acceleratorTypes", atype)}

    def _accel_get(self, ctx: Ctx) -> tuple[int, dict]:
        zone, atype = ctx.params["zone"], ctx.params["acceleratorType"]
        if atype not in cat.ZONE_ACCELERATORS.get(zone, []):
            raise not_found(f"projects/{ctx.project}/zones/{zone}/acceleratorTypes/{atype}")
        return 200, self._accel_body(ctx.project, zone, atype)

    def _accel_list(self, ctx: Ctx) -> tuple[int, dict]:
        zone = ctx.params["zone"]
        self._check_zone(ctx.project, zone)
        items = [self._accel_body(ctx.project, zone, a) for a in sorted(cat.ZONE_ACCELERATORS.get(zone, []))]
        return self._list("compute#acceleratorTypeList", items, ctx, self._link(ctx.project, "zones", zone, "acceleratorTypes"))

    def _accel_aggregated(self, ctx: Ctx) -> tuple[int, dict]:
        by_zone = {z: [self._accel_body(ctx.project, z, a) for a in sorted(accs)] for z, accs in cat.ZONE_ACCELERATORS.items()}
        return self._aggregated("compute#acceleratorTypeAggregatedList", "acceleratorTypes", by_zone, ctx, "acceleratorTypes")

    def _mt_body(self, project: str, zone: str, mt: str) -> dict:
        cpus, mem, builtin = cat.MACHINE_TYPES[mt]
        body = {"kind": "compute#machineType", "id": str(1000 + list(cat.MACHINE_TYPES).index(mt)),
                "creationTimestamp": "1969-12-31T16:00:00.000-08:00", "name": mt,
                "description": f"{cpus} vCPU{'s' if cpus > 1 else ''}, {mem / 1024:g} GB RAM",
                "guestCpus": cpus, "memoryMb": mem, "imageSpaceGb": 0, "maximumPersistentDisks": 128,
                "maximumPersistentDisksSizeGb": "263168", "zone": zone, "isSharedCpu": False,
                "selfLink": self._link(project, "zones", zone, "machineTypes", mt), "architecture": "X86_64"}
        if builtin:
            body["accelerators"] = [{"guestAcceleratorType": builtin[0], "guestAcceleratorCount": builtin[1]}]
        return body

    def _mt_get(self, ctx: Ctx) -> tuple[int, dict]:
        zone, mt = ctx.params["zone"], ctx.params["machineType"]
        if mt not in cat.machine_types_in_zone(zone):
            raise not_found(f"projects/{ctx.project}/zones/{zone}/machineTypes/{mt}")
        return 200, self._mt_body(ctx.project, zone, mt)

    def _mt_list(self, ctx: Ctx) -> tuple[int, dict]:
        zone = ctx.params["zone"]
        self._check_zone(ctx.project, zone)
        items = [self._mt_body(ctx.project, zone, mt) for mt in cat.machine_types_in_zone(zone)]
        return self._list("compute#machineTypeList", items, ctx, self._link(ctx.project, "zones", zone, "machineTypes"))

    def _mt_aggregated(self, ctx: Ctx) -> tuple[int, dict]:
        by_zone = {z: [self._mt_body(ctx.project, z, mt) for mt in cat.machine_types_in_zone(z)] for z in all_zones()}
        return self._aggregated("compute#machineTypeAggregatedList", "machineTypes", by_zone, ctx, "machineTypes")

    def _image_body(self, proj: str, image: str, size: int, family: str | None) -> dict:
        return {"kind": "compute#image", "id": str(abs(hash((proj, image))) % 10**19), "creationTimestamp": "2026-11-01T10:00:00.000-07:00",
                "name": image, "family": family or image.rsplit("-v", 1)[0], "diskSizeGb": str(size), "status": "READY",
                "sourceType": "RAW", "archiveSizeBytes": str(size * 2**28), "architecture": "X86_64",
                "selfLink": self._link(proj, "global", "images", image),
                "licenses": [self._link(proj, "global", "licenses", "dlvm")] if proj == "deeplearning-platform-release" else [],
                "guestOsFeatures": [{"type": "UEFI_COMPATIBLE"}, {"type": "VIRTIO_SCSI_MULTIQUEUE"}, {"type": "GVNIC"}]}

    def _images_from_family(self, ctx: Ctx) -> tuple[int, dict]:
        proj, family = ctx.project, ctx.params["family"]
        _, image, size = self._image(f"projects/{proj}/global/images/family/{family}")
        return 200, self._image_body(proj, image, size, family)

    def _images_get(self, ctx: Ctx) -> tuple[int, dict]:
        proj, image = ctx.project, ctx.params["image"]
        _, image, size = self._image(f"projects/{proj}/global/images/{image}")
        return 200, self._image_body(proj, image, size, None)

    def _zone_body(self, project: str, zone: str) -> dict:
        region = region_of(zone)
        return {"kind": "compute#zone", "id": str(2000 + all_zones().index(zone)), "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
                "name": zone, "description": zone, "status": "UP", "region": self._link(project, "regions", region),
                "selfLink": self._link(project, "zones", zone), "availableCpuPlatforms": ["Intel Broadwell", "Intel Cascade Lake",
                                                                                          "AMD Milan", "Intel Sapphire Rapids"],
                "supportsPzs": False}

    def _zones_get(self, ctx: Ctx) -> tuple[int, dict]:
        zone = ctx.params["zone"]
        if zone not in all_zones():
            raise not_found(f"projects/{ctx.project}/zones/{zone}")
        return 200, self._zone_body(ctx.project, zone)

    def _zones_list(self, ctx: Ctx) -> tuple[int, dict]:
        items = [self._zone_body(ctx.project, z) for z in all_zones()]
        return self._list("compute#zoneList", items, ctx, self._link(ctx.project, "zones"))

    def _quota_list(self, region: str | None) -> list[dict]:
        table = self.project_quotas if region is None else self.region_quotas.get(region, {})
        return [{"metric": m, "limit": lim, "usage": base + self._usage(region, m)} for m, (lim, base) in sorted(table.items())]

    def _region_body(self, project: str, region: str) -> dict:
        return {"kind": "compute#region", "id": str(3000 + list(cat.REGIONS).index(region)),
                "creationTimestamp": "1969-12-31T16:00:00.000-08:00", "name": region, "description": region, "status": "UP",
                "zones": [self._link(project, "zones", z) for z in cat.REGIONS[region]], "quotas": self._quota_list(region),
                "selfLink": self._link(project, "regions", region), "supportsPzs": False}

    def _regions_get(self, ctx: Ctx) -> tuple[int, dict]:
        region = ctx.params["region"]
        if region not in cat.REGIONS:
            raise not_found(f"projects/{ctx.project}/regions/{region}")
        return 200, self._region_body(ctx.project, region)

    def _regions_list(self, ctx: Ctx) -> tuple[int, dict]:
        items = [self._region_body(ctx.project, r) for r in cat.REGIONS]
        return self._list("compute#regionList", items, ctx, self._link(ctx.project, "regions"))

    def _projects_get(self, ctx: Ctx) -> tuple[int, dict]:
        p = ctx.project
        return 200, {"kind": "compute#project", "id": self.project_number, "name": p,
                     "creationTimestamp": "2024-01-15T09:00:00.000-08:00", "selfLink": LINK + f"projects/{p}",
                     "commonInstanceMetadata": {"kind": "compute#metadata", "fingerprint": "AAAAAAAAAAA=",
                                                **({"items": [{"key": k, "value": v} for k, v in self.project_metadata.items()]}
                                                   if self.project_metadata else {})},
                     "quotas": self._quota_list(None), "defaultServiceAccount": f"{self.project_number}-compute@developer.gserviceaccount.com",
                     "xpnProjectStatus": "UNSPECIFIED_XPN_PROJECT_STATUS", "defaultNetworkTier": "PREMIUM",
                     "vmDnsSetting": "ZONAL_ONLY"}

    # ---------------------------------------------------------------- list machinery
    def _list(self, kind: str, items: list[dict], ctx: Ctx, self_link: str) -> tuple[int, dict]:
        items = apply_filter(items, ctx.query.get("filter"))
        max_results = int(ctx.query.get("maxResults") or 500)
        start = int(ctx.query.get("pageToken") or 0)
        page = items[start:start + max_results]
        out: dict = {"kind": kind, "id": self_link.split("/compute/v1/", 1)[-1], "items": copy.deepcopy(page), "selfLink": self_link}
        if not page:
            del out["items"]
        if start + max_results < len(items):
            out["nextPageToken"] = str(start + max_results)
        return 200, out

    def _aggregated(self, kind: str, key: str, by_scope: dict[str, list[dict]], ctx: Ctx, what: str,
                    prefixed: bool = False) -> tuple[int, dict]:
        scopes = sorted(set(by_scope) | ({f"zones/{z}" for z in all_zones()} if prefixed else set(all_zones())))
        items: dict = {}
        for scope in scopes:
            name = scope if prefixed else f"zones/{scope}"
            found = apply_filter(by_scope.get(scope, []), ctx.query.get("filter"))
            if found:
                items[name] = {key: copy.deepcopy(found)}
            else:
                items[name] = {"warning": {"code": "NO_RESULTS_ON_PAGE",
                                           "message": f"There are no results for scope '{name}' on this page.",
                                           "data": [{"key": "scope", "value": name}]}}
        return 200, {"kind": kind, "id": f"projects/{ctx.project}/aggregated/{what}", "items": items,
                     "selfLink": self._link(ctx.project, "aggregated", what)}


_TERM = re.compile(r"""\s*\(?\s*([\w.\-]+)\s*(!=|=|:|\beq\b|\bne\b)\s*("[^"]*"|'[^']*'|[^\s)]+)\s*\)?\s*""")


def apply_filter(items: list[dict], expr: str | None) -> list[dict]:
    """The subset of Compute's list filter syntax gcpdl uses: `a = "x"`, `a != x`, `labels.k:*`,
    `a eq regex`, `a ne regex`, combined with AND (explicit or by juxtaposition)."""
    if not expr:
        return items
    terms = []
    pos = 0
    text = expr.strip()
    while pos < len(text):
        m = _TERM.match(text, pos)
        if not m:
            raise ApiError(400, f"Invalid value for field 'filter': '{expr}'. Invalid list filter expression.")
        terms.append(m.groups())
        pos = m.end()
        conj = re.match(r"\s*AND\s+", text[pos:])
        if conj:
            pos += conj.end()
        elif re.match(r"\s*OR\s+", text[pos:]):
            raise ApiError(400, f"Invalid value for field 'filter': '{expr}'. OR is not supported by this fake.")

    def value_of(item: dict, dotted: str) -> Any:
        cur: Any = item
        for part in dotted.split("."):
            if not isinstance(cur, dict) or part not in cur:
                return None
            cur = cur[part]
        return cur

    def text_of(v: Any) -> str:
        return ("true" if v else "false") if isinstance(v, bool) else str(v)

    def ok(item: dict) -> bool:
        for key, op, raw in terms:
            want = raw[1:-1] if raw[:1] in "\"'" and raw[-1:] == raw[:1] else raw
            v = value_of(item, key)
            if op == ":":
                if v is None or (want != "*" and want not in text_of(v)):
                    return False
                continue
            if op in ("eq", "ne"):
                hit = v is not None and re.fullmatch(want, text_of(v)) is not None
                if hit != (op == "eq"):
                    return False
                continue
            pattern = "^" + ".*".join(re.escape(p) for p in want.split("*")) + "$"
            hit = v is not None and re.match(pattern, text_of(v)) is not None
            if hit != (op == "="):
                return False
        return True

    return [i for i in items if ok(i)]
