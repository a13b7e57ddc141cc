"""Instances: insert with the real API's rules (names, machine type in zone, GPUs, scheduling,
disks, quotas, stockouts), get/list/aggregatedList, start/stop/delete, metadata, labels, tags,
scheduling and guest attributes. A mixin of FakeCompute: ``self`` is the fake and its state."""

from __future__ import annotations

import copy
import re

from tests.fakes import compute_catalog as cat
from tests.fakes.compute_common import (
    ACTIVE, NAME_RE, ApiError, Ctx, OpError, check_labels, check_metadata, invalid_field, not_found, path_of, region_of,
)


class InstancesMixin:
    # ---------------------------------------------------------------- instances
    def _instances_insert(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, body = ctx.project, ctx.params["zone"], ctx.body
        region = self._check_zone(project, zone)
        name = body.get("name", "")
        if not re.fullmatch(NAME_RE, name or ""):
            raise invalid_field("resource.name", name, f"Must be a match of regex '{NAME_RE}'")
        if (zone, name) in self.instances_by_key:
            raise ApiError(409, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' already exists",
                           reason="alreadyExists")
        check_labels(body.get("labels"), "resource.labels")
        check_metadata(body.get("metadata"), "resource.metadata")
        if not body.get("networkInterfaces"):
            raise ApiError(400, "Invalid value for field 'resource.networkInterfaces': ''. At least one network interface is required.")
        for i, nic in enumerate(body["networkInterfaces"]):
            self._nic_network(project, zone, nic, i)
        mt_name = self._machine_type_of(project, zone, body.get("machineType"))
        builtin = cat.MACHINE_TYPES[mt_name][2]
        accs = self._accelerators(project, zone, mt_name, builtin, body.get("guestAccelerators") or [])
        sched = body.get("scheduling") or {}
        spot = sched.get("provisioningModel") == "SPOT" or sched.get("preemptible") is True
        ohm = sched.get("onHostMaintenance") or ("TERMINATE" if spot else "MIGRATE")
        if spot and ohm != "TERMINATE":
            raise invalid_field("resource.scheduling.onHostMaintenance", ohm,
                                "Scheduling must have preemptible be false when OnHostMaintenance isn't TERMINATE.")
        if accs and ohm != "TERMINATE":
            raise ApiError(400, "Instances with guest accelerators do not support live migration.", reason="badRequest")
        # A time limit (maxRunDuration / terminationTime) takes a termination action on standard
        # VMs too (https://cloud.google.com/compute/docs/instances/limit-vm-runtime).
        if sched.get("instanceTerminationAction") and not (spot or sched.get("maxRunDuration") or sched.get("terminationTime")):
            raise invalid_field("resource.scheduling.instanceTerminationAction", sched["instanceTerminationAction"],
                                "Instance termination action can only be set for SPOT instances or with a time limit.")
        image_gb = self._check_disks(project, zone, name, body.get("disks") or [], mt_name)
        if body.get("resourcePolicies"):
            body["resourcePolicies"] = self._check_instance_policies(project, zone, mt_name, body["resourcePolicies"])
        sync_err, op_err = self._capacity_errors(project, zone, region, accs, spot, mt_name)
        if sync_err:
            raise sync_err
        if op_err:
            # the real API answers with a RUNNING operation that ends in error; nothing is created
            op = self._new_op(project, ("zones", zone), "insert", None,
                              target_link=self._link(project, "zones", zone, "instances", name), error=op_err)
            return self._op_response(op)
        inst = self._materialize(project, zone, body, nat_ip=self.nat_ips.get(name, self.default_nat_ip), disk_image_gb=image_gb)
        inst["status"] = "PROVISIONING"

        def progress() -> None:
            if inst["status"] == "PROVISIONING":
                inst["status"] = "STAGING"

        def done() -> None:
            inst["status"] = "RUNNING"
            inst["lastStartTimestamp"] = self._ts()
            for d in self._instance_disks(zone, inst):
                d["status"] = "READY"

        op = self._new_op(project, ("zones", zone), "insert", inst, on_done=done, on_progress=progress)
        return self._op_response(op)

    def _machine_type_of(self, project: str, zone: str, ref: str | None) -> str:
        if not ref:
            raise ApiError(400, "Invalid value for field 'resource.machineType': ''. Machine type must be specified.")
        m = re.fullmatch(r"(?:https?://[^/]+/compute/v1/)?(?:projects/([^/]+)/)?zones/([^/]+)/machineTypes/([^/]+)", ref)
        if not m:
            raise invalid_field("resource.machineType", ref, "Must be a URL to a valid Compute resource of the correct type.")
        _, mzone, mt = m.groups()
        if mzone != zone or mt not in cat.machine_types_in_zone(zone):
            raise invalid_field("resource.machineType", ref, f"Machine type with name '{mt}' does not exist in zone '{zone}'.")
        return mt

    def _accelerators(self, project: str, zone: str, mt: str, builtin: tuple[str, int] | None, requested: list[dict]) -> list[tuple[str, int]]:
        if builtin:
            if requested:
                want = []
                for a in requested:
                    t = (a.get("acceleratorType") or "").rsplit("/", 1)[-1]
                    want.append((t, int(a.get("acceleratorCount", 0) or 0)))
                if want != [builtin]:
                    raise ApiError(400, f"[{mt}, {want[0][0]}] features are not compatible for creating instance.")
            return [builtin]
        out = []
        family = mt.split("-", 1)[0]
        for i, a in enumerate(requested):
            ref = a.get("acceleratorType") or ""
            fld = f"resource.guestAccelerators[{i}].acceleratorType"
            m = re.fullmatch(r"(?:https?://[^/]+/compute/v1/)?(?:projects/([^/]+)/)?zones/([^/]+)/acceleratorTypes/([^/]+)", ref)
            if not m:
                raise invalid_field(fld, ref, "Must be a URL to a valid Compute resource of the correct type.")
            azone, atype = m.group(2), m.group(3)
            if azone != zone or atype not in cat.ZONE_ACCELERATORS.get(zone, []):
                # what gcloud users see: "Could not fetch resource: - The resource
                # 'projects/p/zones/us-west1-b/acceleratorTypes/nvidia-tesla-p4' was not found"
                raise not_found(f"projects/{project}/zones/{azone}/acceleratorTypes/{atype}")
            count = int(a.get("acceleratorCount", 0) or 0)
            maximum = cat.ACCELERATORS[atype][1]
            if count < 1 or count > maximum:
                raise invalid_field(f"resource.guestAccelerators[{i}].acceleratorCount", count,
                                    f"Accelerator count must be between 1 and {maximum} for accelerator type '{atype}'.")
            if atype not in cat.ATTACHABLE.get(family, set()):
                raise ApiError(400, f"[{mt}, {atype}] features are not compatible for creating instance.")
            out.append((atype, count))
        return out

    def _image(self, ref: str) -> tuple[str, str, int]:
        """(project, image name, diskSizeGb) for an image or image-family URL, or 404."""
        m = re.fullmatch(r"(?:https?://[^/]+/compute/v1/)?projects/([^/]+)/global/images/(family/)?([^/]+)", ref or "")
        if not m:
            raise not_found(ref)
        proj, is_family, name = m.groups()
        fams = {**cat.IMAGE_FAMILIES.get(proj, {}), **self.extra_images.get(proj, {})}
        if is_family:
            size = fams.get(name)
            if size is None and proj == "deeplearning-platform-release" and name.startswith(cat.DLVM_FAMILY_PREFIXES):
                size = cat.DLVM_DEFAULT_GB
            if size is None:
                raise not_found(f"projects/{proj}/global/images/family/{name}")
            return proj, f"{name}-v20261101", size
        for fam, size in fams.items():
            if name.startswith(fam + "-v"):
                return proj, name, size
        raise not_found(f"projects/{proj}/global/images/{name}")

    def _check_disk_type_fits(self, mt_name: str, dtype: str, field: str) -> None:
        fam = mt_name.split("-", 1)[0]
        if dtype in cat.HYPERDISK_TYPES and fam in cat.NO_HYPERDISK_FAMILIES:
            raise ApiError(400, f"Invalid resource usage: '[{dtype}] disk type cannot be used by [{mt_name}] machine type.'",
                           reason="invalidResourceUsage")
        if dtype == "pd-standard" and fam in cat.NO_PD_STANDARD_FAMILIES:
            raise ApiError(400, f"Invalid resource usage: '[pd-standard] disk type cannot be used by [{mt_name}] machine type.'",
                           reason="invalidResourceUsage")

    def _check_scratch(self, zone: str, i: int, d: dict) -> None:
        ip = d.get("initializeParams") or {}
        dt = ip.get("diskType") or ""
        if not re.fullmatch(r"(?:https?://[^/]+/compute/v1/)?(?:projects/[^/]+/)?zones/" + re.escape(zone) + "/diskTypes/local-ssd", dt):
            raise invalid_field(f"resource.disks[{i}].initializeParams.diskType", dt, "Scratch disks must be of type local-ssd.")
        if d.get("source") or ip.get("sourceImage"):
            raise invalid_field(f"resource.disks[{i}]", "", "Scratch disks cannot have a source.")
        if d.get("interface", "SCSI") != "NVME":
            raise invalid_field(f"resource.disks[{i}].interface", d.get("interface", "SCSI"),
                                "This machine type requires local SSDs with the NVME interface.")
        if ip.get("diskSizeGb") is not None and int(ip["diskSizeGb"]) != cat.LOCAL_SSD_GB:
            raise invalid_field(f"resource.disks[{i}].initializeParams.diskSizeGb", ip["diskSizeGb"],
                                f"Local SSD disks must be {cat.LOCAL_SSD_GB} GB.")
        if d.get("autoDelete") is False:
            raise invalid_field(f"resource.disks[{i}].autoDelete", "false", "Scratch disks must be auto-deleted.")

    def _check_disks(self, project: str, zone: str, name: str, disks: list[dict], mt_name: str = "n1-standard-1") -> int | None:
        boots = [d for d in disks if d.get("boot")]
        if len(boots) != 1:
            raise ApiError(400, "Invalid value for field 'resource.disks': ''. Boot disk must be specified." if not boots
                           else "Invalid value for field 'resource.disks': ''. Only one boot disk may be specified.")
        scratch = [i for i, d in enumerate(disks) if d.get("type") == "SCRATCH"]
        for i in scratch:
            self._check_scratch(zone, i, disks[i])
        if scratch:
            allowed = cat.LOCAL_SSD_COUNTS.get(mt_name, cat.LOCAL_SSD_COUNTS.get(mt_name.split("-", 1)[0], set()))
            if len(scratch) not in allowed:
                raise ApiError(400, f"Invalid value for field 'resource.disks': ''. {mt_name} does not support "
                                    f"{len(scratch)} local SSD disks.", reason="invalid")
        image_gb = None
        for i, d in enumerate(disks):
            if d.get("type") == "SCRATCH":
                continue
            ip = d.get("initializeParams")
            if ip is not None and (ip.get("diskType") or "").endswith("/local-ssd"):
                raise invalid_field(f"resource.disks[{i}].type", d.get("type", "PERSISTENT"), "Local SSD disks must be of type SCRATCH.")
            if ip is not None:
                dname = ip.get("diskName") or (name if d.get("boot") else f"{name}-{i}")
                if not re.fullmatch(NAME_RE, dname):
                    raise invalid_field(f"resource.disks[{i}].initializeParams.diskName", dname, f"Must be a match of regex '{NAME_RE}'")
                if (zone, dname) in self.disks_by_key:
                    raise ApiError(409, f"The resource 'projects/{project}/zones/{zone}/disks/{dname}' already exists",
                                   reason="alreadyExists")
                dt = ip.get("diskType")
                if dt and not re.fullmatch(r"(?:https?://[^/]+/compute/v1/)?(?:projects/[^/]+/)?zones/" + re.escape(zone)
                                           + "/diskTypes/(" + "|".join(cat.DISK_TYPES) + ")", dt):
                    raise invalid_field(f"resource.disks[{i}].initializeParams.diskType", dt, "Disk type must be a valid URL in the instance's zone.")
                self._check_disk_type_fits(mt_name, (dt or "pd-standard").rsplit("/", 1)[-1], f"resource.disks[{i}]")
                size = ip.get("diskSizeGb")
                if ip.get("sourceImage"):
                    _, _, img_gb = self._image(ip["sourceImage"])
                    if d.get("boot"):
                        image_gb = img_gb
                    if size is not None and int(size) < img_gb:
                        raise invalid_field(f"resource.disks[{i}].initializeParams.diskSizeGb", size,
                                            f"Requested disk size cannot be smaller than the image size ({img_gb} GB)")
                elif d.get("boot"):
                    raise invalid_field(f"resource.disks[{i}].initializeParams.sourceImage", "", "A source image must be specified for a boot disk.")
                if size is not None and int(size) < 10:
                    raise invalid_field(f"resource.disks[{i}].initializeParams.diskSizeGb", size, "Disk size cannot be smaller than 10 GB.")
            elif d.get("source"):
                m = re.fullmatch(r"(?:https?://[^/]+/compute/v1/)?(?:projects/[^/]+/)?zones/([^/]+)/disks/([^/]+)", d["source"])
                disk = self.disks_by_key.get((m.group(1), m.group(2))) if m else None
                if disk is None or m is None or m.group(1) != zone:
                    raise invalid_field(f"resource.disks[{i}].source", d["source"], "The referenced disk resource cannot be found.")
                self._check_disk_type_fits(mt_name, disk["type"].rsplit("/", 1)[-1], f"resource.disks[{i}]")
                self._check_attach_mode(disk, d.get("mode", "READ_WRITE"))
            else:
                raise invalid_field(f"resource.disks[{i}]", "", "Either source or initializeParams must be specified.")
        return image_gb

    def _capacity_errors(self, project: str, zone: str, region: str, accs: list[tuple[str, int]], spot: bool,
                         machine_type: str, ignore: dict | None = None) -> tuple[ApiError | None, OpError | None]:
        """Quota first (as the real API checks it), then stockout."""
        gpus = sum(c for _, c in accs)
        if gpus:
            lim, used = self._quota_state(None, "GPUS_ALL_REGIONS", ignore)
            if lim is not None and used + gpus > lim:
                msg = f"Quota 'GPUS_ALL_REGIONS' exceeded.  Limit: {lim:.1f} globally."
                info = {"metricName": "compute.googleapis.com/gpus_all_regions", "limitName": "GPUS-ALL-REGIONS-per-project",
                        "dimensions": {"global": "global"}, "limit": lim}
                if self.quota_error_mode == "operation":
                    return None, OpError("QUOTA_EXCEEDED", msg, 403, [{"quotaInfo": info}])
                return ApiError(403, msg, reason="quotaExceeded", domain="usageLimits", details=[
                    {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "QUOTA_EXCEEDED", "domain": "compute.googleapis.com",
                     "metadata": {"quota_metric": info["metricName"], "quota_limit": info["limitName"], "quota_limit_value": str(int(lim))}},
                ]), None
            for atype, count in accs:
                metric = self._gpu_metric(region, atype, spot)
                lim, used = self._quota_state(region, metric, ignore)
                if lim is not None and used + count > lim:
                    msg = f"Quota '{metric}' exceeded.  Limit: {lim:.1f} in region {region}."
                    info = {"metricName": f"compute.googleapis.com/{metric.lower()}",
                            "limitName": f"{metric.replace('_', '-')}-per-project-region",
                            "dimensions": {"region": region}, "limit": lim}
                    if self.quota_error_mode == "sync":
                        return ApiError(403, msg, reason="quotaExceeded", domain="usageLimits"), None
                    return None, OpError("QUOTA_EXCEEDED", msg, 403, [{"quotaInfo": info}])
        so = self.stockouts.get(zone)
        if so and so.after > 0 and ignore is None:
            so.after -= 1  # this one still fits
            so = None
        if so:
            text = f"The zone 'projects/{project}/zones/{zone}' does not have enough resources available to fulfill the request."
            if so.sync_503:
                return ApiError(503, f"{text}  Try a different zone, or try again later.", reason="resourceUnavailable",
                                status="UNAVAILABLE"), None
            details: list = []
            if so.code.endswith("_WITH_DETAILS"):
                msg = f"{text}  '(resource type:compute)'."
                # recorded shape: reason "resource_availability", metadatas vmType/attachment
                meta: dict = {"zone": zone, "vmType": machine_type}
                if accs:
                    meta["attachment"] = ",".join(f"{t}={c}" for t, c in accs)
                if so.zones_available:
                    meta["zonesAvailable"] = ",".join(so.zones_available)
                details = [{"errorInfo": {"reason": "resource_availability", "domain": "compute.googleapis.com", "metadatas": meta}},
                           {"help": {"links": [{"description": "Troubleshooting documentation",
                                                "url": "https://cloud.google.com/compute/docs/resource-error"}]}}]
            else:
                msg = f"{text}  Try a different zone, or try again later."
                if so.zones_available:
                    details = [{"errorInfo": {"reason": "resource_availability", "domain": "compute.googleapis.com",
                                              "metadatas": {"zone": zone, "zonesAvailable": ",".join(so.zones_available)}}}]
            return None, OpError(so.code, msg, 503, details)
        return None, None

    def _quota_state(self, region: str | None, metric: str, ignore: dict | None = None) -> tuple[float | None, float]:
        table = self.project_quotas if region is None else self.region_quotas.get(region, {})
        if metric not in table:
            return None, 0.0
        lim, base = table[metric]
        return lim, base + self._usage(region, metric, ignore)

    def _usage(self, region: str | None, metric: str, ignore: dict | None = None) -> float:
        total = 0.0
        for (zone, _), inst in self.instances_by_key.items():
            if inst is ignore or inst["status"] not in ACTIVE:
                continue
            if region is not None and region_of(zone) != region:
                continue
            spot = inst.get("scheduling", {}).get("provisioningModel") == "SPOT"
            if metric == "CPUS":
                total += cat.MACHINE_TYPES.get(inst["machineType"].rsplit("/", 1)[-1], (0, 0, None))[0]
                continue
            for a in inst.get("guestAccelerators", []):
                atype, count = a["acceleratorType"].rsplit("/", 1)[-1], a.get("acceleratorCount", 0)
                if metric == "GPUS_ALL_REGIONS":
                    total += count
                elif metric == self._gpu_metric(region_of(zone), atype, spot):
                    total += count
        return total

    def _gpu_metric(self, region: str, atype: str, spot: bool) -> str:
        """The regional metric a GPU draws from: Spot VMs use the PREEMPTIBLE_ quota when the
        project has one, the standard quota when its limit is 0
        (https://cloud.google.com/compute/resource-usage#preemptible_quota)."""
        metric = cat.ACCELERATORS[atype][2]
        if spot:
            lim = self.region_quotas.get(region, {}).get("PREEMPTIBLE_" + metric, [0.0])[0]
            if lim > 0:
                return "PREEMPTIBLE_" + metric
        return metric

    def _materialize(self, project: str, zone: str, body: dict, nat_ip: str | None, disk_image_gb: int | None) -> dict:
        """Turn a (valid) insert body into the stored instance resource, creating its disks."""
        name = body["name"]
        now = self._ts()
        mt = body["machineType"].rsplit("/", 1)[-1]
        builtin = cat.MACHINE_TYPES.get(mt, (0, 0, None))[2]
        self_link = self._link(project, "zones", zone, "instances", name)
        inst = copy.deepcopy(body)
        inst.update(
            kind="compute#instance",
            id=self._new_id(),
            creationTimestamp=now,
            status="PROVISIONING",
            machineType=self._link(project, "zones", zone, "machineTypes", mt),
            zone=self._link(project, "zones", zone),
            selfLink=self_link,
            cpuPlatform="Intel Broadwell" if mt.startswith("n1") else "Intel Cascade Lake",
            labels=dict(body.get("labels") or {}),
            labelFingerprint=self._fingerprint(),
            fingerprint=self._fingerprint(),
            startRestricted=False,
            deletionProtection=bool(body.get("deletionProtection", False)),
            canIpForward=bool(body.get("canIpForward", False)),
        )
        md = body.get("metadata") or {}
        inst["metadata"] = {"kind": "compute#metadata", "fingerprint": self._fingerprint(), "items": list(md.get("items") or [])}
        if not inst["metadata"]["items"]:
            del inst["metadata"]["items"]
        tags = body.get("tags") or {}
        inst["tags"] = {"fingerprint": self._fingerprint(), **({"items": list(tags["items"])} if tags.get("items") else {})}
        sched = dict(body.get("scheduling") or {})
        spot = sched.get("provisioningModel") == "SPOT" or sched.get("preemptible") is True
        sched.setdefault("onHostMaintenance", "TERMINATE" if spot else "MIGRATE")
        sched.setdefault("automaticRestart", not spot)
        sched.setdefault("preemptible", spot)
        sched.setdefault("provisioningModel", "SPOT" if spot else "STANDARD")
        inst["scheduling"] = sched
        accs = [builtin] if builtin else [
            (a["acceleratorType"].rsplit("/", 1)[-1], int(a.get("acceleratorCount", 1))) for a in body.get("guestAccelerators") or []]
        if accs:
            inst["guestAccelerators"] = [{"acceleratorType": self._link(project, "zones", zone, "acceleratorTypes", t),
                                          "acceleratorCount": c} for t, c in accs]
        else:
            inst.pop("guestAccelerators", None)
        region = region_of(zone)
        nics = []
        for i, nic in enumerate(body.get("networkInterfaces") or [{}]):
            if nic.get("subnetwork"):
                net, sub = self._nic_network(project, zone, nic, i)
            else:  # seeded instances (add_instance) land in the network named, existing or not
                net = sub = (nic.get("network") or "global/networks/default").rsplit("/", 1)[-1]
            out = {
                "kind": "compute#networkInterface",
                "name": f"nic{i}",
                "network": self._link(project, "global", "networks", net),
                "subnetwork": self._link(project, "regions", region, "subnetworks", sub),
                "networkIP": self.internal_ips.get(name) or f"10.128.0.{next(self._ip_counter)}",
                "fingerprint": self._fingerprint(),
                "stackType": "IPV4_ONLY",
            }
            acs = nic.get("accessConfigs") or []
            if acs:
                out["accessConfigs"] = [{"kind": "compute#accessConfig", "type": "ONE_TO_ONE_NAT",
                                         "name": ac.get("name", "External NAT"), "networkTier": ac.get("networkTier", "PREMIUM"),
                                         **({"natIP": ac.get("natIP") or nat_ip} if (ac.get("natIP") or nat_ip) else {})}
                                        for ac in acs]
            nics.append(out)
        inst["networkInterfaces"] = nics
        # "default" names the project's Compute Engine default service account, as the API says
        for sa in inst.get("serviceAccounts") or []:
            if sa.get("email") == "default":
                sa["email"] = f"{self.project_number}-compute@developer.gserviceaccount.com"
        attached = []
        for i, d in enumerate(body.get("disks") or []):
            ip = d.get("initializeParams")
            if d.get("type") == "SCRATCH":  # no disk resource: it lives and dies with the VM
                attached.append({
                    "kind": "compute#attachedDisk", "type": "SCRATCH", "mode": "READ_WRITE",
                    "deviceName": d.get("deviceName") or f"local-ssd-{i}", "index": i, "boot": False,
                    "autoDelete": True, "interface": "NVME", "diskSizeGb": str(cat.LOCAL_SSD_GB), "architecture": "X86_64",
                })
                continue
            if ip is not None:
                dname = ip.get("diskName") or (name if d.get("boot") else f"{name}-{i}")
                size = int(ip.get("diskSizeGb") or disk_image_gb or (cat.DLVM_DEFAULT_GB if d.get("boot") else 500))
                dtype = (ip.get("diskType") or "pd-standard").rsplit("/", 1)[-1]
                disk = self._make_disk(project, zone, dname, size, dtype, ip.get("sourceImage"), ip.get("labels"))
                disk["users"] = [self_link]
                disk["lastAttachTimestamp"] = now
                disk["status"] = "CREATING" if disk_image_gb is not None or not d.get("boot") else "READY"
                self.disks_by_key[(zone, dname)] = disk
            else:
                dname = d["source"].rsplit("/", 1)[-1]
                disk = self.disks_by_key[(zone, dname)]
                disk.setdefault("users", []).append(self_link)
                disk["lastAttachTimestamp"] = now
            attached.append({
                "kind": "compute#attachedDisk", "type": "PERSISTENT", "mode": d.get("mode", "READ_WRITE"),
                "source": disk["selfLink"], "deviceName": d.get("deviceName") or (dname if not d.get("boot") else "persistent-disk-0"),
                "index": i, "boot": bool(d.get("boot")), "autoDelete": bool(d.get("autoDelete", False)),
                "interface": d.get("interface", "SCSI"), "diskSizeGb": disk["sizeGb"], "architecture": "X86_64",
            })
        inst["disks"] = attached
        self.instances_by_key[(zone, name)] = inst
        return inst

    def _make_disk(self, project: str, zone: str, name: str, size: int, dtype: str, source_image: str | None, labels: dict | None) -> dict:
        disk = {
            "kind": "compute#disk", "id": self._new_id(), "creationTimestamp": self._ts(), "name": name,
            "sizeGb": str(size), "zone": self._link(project, "zones", zone), "status": "READY",
            "selfLink": self._link(project, "zones", zone, "disks", name),
            "type": self._link(project, "zones", zone, "diskTypes", dtype),
            "labels": dict(labels or {}), "labelFingerprint": self._fingerprint(), "physicalBlockSizeBytes": "4096",
            "architecture": "X86_64",
        }
        if source_image:
            proj, image, _ = self._image(source_image)
            disk["sourceImage"] = self._link(proj, "global", "images", image)
            disk["sourceImageId"] = self._new_id()
        return disk

    def _instance_disks(self, zone: str, inst: dict) -> list[dict]:
        out = []
        for d in inst.get("disks", []):
            if not d.get("source"):
                continue  # local SSD
            disk = self.disks_by_key.get((zone, d["source"].rsplit("/", 1)[-1]))
            if disk is not None:
                out.append(disk)
        return out

    def _instances_get(self, ctx: Ctx) -> tuple[int, dict]:
        zone, name = ctx.params["zone"], ctx.params["instance"]
        inst = self._get_instance(ctx.project, zone, name)
        self._advance_target(inst["selfLink"])
        inst = self.instances_by_key.get((zone, name))
        if inst is None:
            raise not_found(f"projects/{ctx.project}/zones/{zone}/instances/{name}")
        return 200, copy.deepcopy(inst)

    def _instances_list(self, ctx: Ctx) -> tuple[int, dict]:
        zone = ctx.params["zone"]
        self._check_zone(ctx.project, zone)
        items = [i for (z, _), i in sorted(self.instances_by_key.items()) if z == zone]
        return self._list("compute#instanceList", items, ctx, self._link(ctx.project, "zones", zone, "instances"))

    def _instances_aggregated(self, ctx: Ctx) -> tuple[int, dict]:
        by_zone: dict[str, list[dict]] = {}
        for (z, _), inst in sorted(self.instances_by_key.items()):
            by_zone.setdefault(z, []).append(inst)
        return self._aggregated("compute#instanceAggregatedList", "instances", by_zone, ctx, "instances")

    def _instances_delete(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, name = ctx.project, ctx.params["zone"], ctx.params["instance"]
        inst = self._get_instance(project, zone, name)
        if inst.get("deletionProtection"):
            raise ApiError(400, f"Invalid resource usage: 'Resource cannot be deleted if it's protected against deletion.'.",
                           reason="resourceInUseByAnotherResource")
        inst["status"] = "STOPPING"
        op = self._new_op(project, ("zones", zone), "delete", inst, on_done=lambda: self._remove_instance(zone, inst))
        return self._op_response(op)

    def _remove_instance(self, zone: str, inst: dict) -> None:
        """Delete an instance: auto-delete disks go with it, other disks are detached."""
        for d in inst.get("disks", []):
            if not d.get("source"):
                continue  # local SSD: gone with the instance
            key = (zone, d["source"].rsplit("/", 1)[-1])
            disk = self.disks_by_key.get(key)
            if disk is None:
                continue
            if d.get("autoDelete"):
                del self.disks_by_key[key]
            else:
                disk["users"] = [u for u in disk.get("users", []) if u != inst["selfLink"]]
                if not disk["users"]:
                    del disk["users"]
                disk["lastDetachTimestamp"] = self._ts()
        self.instances_by_key.pop((zone, inst["name"]), None)
        self.guest_attrs.pop((zone, inst["name"]), None)

    def _instances_start(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, name = ctx.project, ctx.params["zone"], ctx.params["instance"]
        inst = self._get_instance(project, zone, name)
        if inst["status"] in ("RUNNING", "PROVISIONING", "STAGING"):
            op = self._new_op(project, ("zones", zone), "start", inst, polls=0)
            return self._op_response(op)
        if inst["status"] not in ("TERMINATED", "STOPPED"):
            raise ApiError(400, f"The resource '{path_of(inst['selfLink'])}' is not ready", reason="resourceNotReady")
        accs = [(a["acceleratorType"].rsplit("/", 1)[-1], a["acceleratorCount"]) for a in inst.get("guestAccelerators", [])]
        spot = inst["scheduling"].get("provisioningModel") == "SPOT"
        sync_err, op_err = self._capacity_errors(project, zone, region_of(zone), accs, spot,
                                                 inst["machineType"].rsplit("/", 1)[-1], ignore=inst)
        if sync_err:
            raise sync_err
        if op_err:
            op = self._new_op(project, ("zones", zone), "start", inst, error=op_err)
            return self._op_response(op)
        inst["status"] = "STAGING"

        def done() -> None:
            inst["status"] = "RUNNING"
            inst["lastStartTimestamp"] = self._ts()
            if self.start_nat_ip:  # a real ephemeral external IP usually changes across stop/start
                for nic in inst["networkInterfaces"]:
                    for ac in nic.get("accessConfigs", []):
                        ac["natIP"] = self.start_nat_ip

        op = self._new_op(project, ("zones", zone), "start", inst, on_done=done)
        return self._op_response(op)

    def _instances_stop(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, name = ctx.project, ctx.params["zone"], ctx.params["instance"]
        inst = self._get_instance(project, zone, name)
        # the discovery document: discardLocalSsd "is required if the instance has any attached
        # Local SSD disks"
        if any(d.get("type") == "SCRATCH" for d in inst.get("disks", [])) and "discardLocalSsd" not in ctx.query:
            raise ApiError(400, "Invalid value for field 'discardLocalSsd': ''. discardLocalSsd must be specified "
                                "for instances with attached Local SSD disks.", reason="invalid")
        if ctx.query.get("discardLocalSsd") == "true":
            inst["gcpdlFakeLocalSsdDiscarded"] = True  # (not an API field: read by tests through gcp.instances())
        if inst["status"] == "TERMINATED":
            op = self._new_op(project, ("zones", zone), "stop", inst, polls=0)
            return self._op_response(op)
        inst["status"] = "STOPPING"

        def done() -> None:
            inst["status"] = "TERMINATED"
            inst["lastStopTimestamp"] = self._ts()

        op = self._new_op(project, ("zones", zone), "stop", inst, on_done=done)
        return self._op_response(op)

    def _instances_set_metadata(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, name = ctx.project, ctx.params["zone"], ctx.params["instance"]
        inst = self._get_instance(project, zone, name)
        check_metadata(ctx.body, "metadata")
        fp = ctx.body.get("fingerprint")
        if fp != inst["metadata"]["fingerprint"]:
            raise ApiError(412, "Supplied fingerprint does not match current metadata fingerprint.", reason="conditionNotMet",
                           extra={"location": "If-Match", "locationType": "header"})
        inst["metadata"] = {"kind": "compute#metadata", "fingerprint": self._fingerprint(),
                            **({"items": list(ctx.body["items"])} if ctx.body.get("items") else {})}
        op = self._new_op(project, ("zones", zone), "setMetadata", inst)
        return self._op_response(op)

    def _instances_set_labels(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, name = ctx.project, ctx.params["zone"], ctx.params["instance"]
        inst = self._get_instance(project, zone, name)
        check_labels(ctx.body.get("labels"), "labels")
        if ctx.body.get("labelFingerprint") != inst["labelFingerprint"]:
            raise ApiError(412, "Labels fingerprint either invalid or resource labels have changed", reason="conditionNotMet",
                           extra={"location": "If-Match", "locationType": "header"})
        inst["labels"] = dict(ctx.body.get("labels") or {})
        inst["labelFingerprint"] = self._fingerprint()
        op = self._new_op(project, ("zones", zone), "setLabels", inst)
        return self._op_response(op)

    def _instances_set_tags(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, name = ctx.project, ctx.params["zone"], ctx.params["instance"]
        inst = self._get_instance(project, zone, name)
        if ctx.body.get("fingerprint") != inst["tags"]["fingerprint"]:
            raise ApiError(412, "Supplied fingerprint does not match current tags fingerprint.", reason="conditionNotMet")
        inst["tags"] = {"fingerprint": self._fingerprint(), **({"items": list(ctx.body["items"])} if ctx.body.get("items") else {})}
        op = self._new_op(project, ("zones", zone), "setTags", inst)
        return self._op_response(op)

    def _instances_set_scheduling(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, name = ctx.project, ctx.params["zone"], ctx.params["instance"]
        inst = self._get_instance(project, zone, name)
        sched = dict(ctx.body)
        if inst.get("guestAccelerators") and sched.get("onHostMaintenance", "TERMINATE") != "TERMINATE":
            raise ApiError(400, "Instances with guest accelerators do not support live migration.", reason="badRequest")
        if sched.get("provisioningModel") != inst["scheduling"].get("provisioningModel") and "provisioningModel" in sched \
                and inst["status"] != "TERMINATED":
            raise ApiError(400, "Instance must be stopped to change the provisioning model.", reason="badRequest")
        inst["scheduling"].update(sched)
        op = self._new_op(project, ("zones", zone), "setScheduling", inst)
        return self._op_response(op)

    def _instances_test_permissions(self, ctx: Ctx) -> tuple[int, dict]:
        """Every permission asked is granted unless a test denied it (``deny(permission)``)."""
        self._get_instance(ctx.project, ctx.params["zone"], ctx.params["resource"])
        granted = [p for p in (ctx.body or {}).get("permissions") or [] if p not in self.denied]
        return 200, ({"permissions": granted} if granted else {})

    def _instances_guest_attributes(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, name = ctx.project, ctx.params["zone"], ctx.params["instance"]
        inst = self._get_instance(project, zone, name)
        md = {i["key"]: i.get("value") for i in inst.get("metadata", {}).get("items", [])}
        query_path = ctx.query.get("queryPath")
        variable_key = ctx.query.get("variableKey")
        missing = not_found(f"projects/{project}/zones/{zone}/instances/{name}/guestAttributes/{query_path or variable_key or ''}")
        if str(md.get("enable-guest-attributes", "")).upper() != "TRUE":
            raise missing
        attrs = self.guest_attrs.get((zone, name), {})
        out: dict = {"kind": "compute#guestAttributes", "selfLink": inst["selfLink"] + "/getGuestAttributes"}
        if variable_key:
            ns, _, key = variable_key.partition("/")
            if key not in attrs.get(ns, {}):
                raise missing
            out.update(variableKey=variable_key, variableValue=attrs[ns][key])
            return 200, out
        ns_filter, _, key_prefix = (query_path or "").partition("/")
        items = [{"namespace": ns, "key": k, "value": v}
                 for ns, kv in sorted(attrs.items()) if not ns_filter or ns == ns_filter
                 for k, v in sorted(kv.items()) if k.startswith(key_prefix)]
        if not items:
            raise missing
        out.update(queryPath=query_path or "", queryValue={"items": items})
        return 200, out


    # ---------------------------------------------------------------- attach / detach
    def _disk_writer(self, disk: dict) -> str | None:
        """The instance that has ``disk`` attached READ_WRITE, if any."""
        for user in disk.get("users") or []:
            zone, name = user.split("/zones/")[1].split("/instances/")
            inst = self.instances_by_key.get((zone, name))
            for d in (inst or {}).get("disks", []):
                if d.get("source") == disk["selfLink"] and d.get("mode", "READ_WRITE") == "READ_WRITE":
                    return user
        return None

    def _check_attach_mode(self, disk: dict, mode: str) -> None:
        """GCE multi-attach: one READ_WRITE user and no one else, or any number of READ_ONLY users."""
        users = disk.get("users") or []
        if not users:
            return
        writer = self._disk_writer(disk)
        if mode == "READ_WRITE" or writer is not None:
            raise ApiError(400, f"The disk resource '{path_of(disk['selfLink'])}' is already being used by "
                                f"'{path_of(writer or users[0])}'" + (" in read-write mode" if writer else ""),
                           reason="resourceInUseByAnotherResource")

    def _instances_attach_disk(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, name, body = ctx.project, ctx.params["zone"], ctx.params["instance"], ctx.body
        inst = self._get_instance(project, zone, name)
        m = re.fullmatch(r"(?:https?://[^/]+/compute/v1/)?(?:projects/[^/]+/)?zones/([^/]+)/disks/([^/]+)", body.get("source") or "")
        disk = self.disks_by_key.get((m.group(1), m.group(2))) if m else None
        if disk is None or m.group(1) != zone:
            raise invalid_field("resource.source", body.get("source"), "The referenced disk resource cannot be found.")
        if inst["selfLink"] in (disk.get("users") or []):
            raise ApiError(400, f"The disk resource '{path_of(disk['selfLink'])}' is already being used by "
                                f"'{path_of(inst['selfLink'])}'", reason="resourceInUseByAnotherResource")
        mode = body.get("mode", "READ_WRITE")
        self._check_attach_mode(disk, mode)
        device = body.get("deviceName") or disk["name"]
        if any(d.get("deviceName") == device for d in inst.get("disks", [])):
            raise invalid_field("resource.deviceName", device, "Device name is already in use on this instance.")
        disk.setdefault("users", []).append(inst["selfLink"])
        disk["lastAttachTimestamp"] = self._ts()
        inst.setdefault("disks", []).append({
            "kind": "compute#attachedDisk", "type": "PERSISTENT", "mode": mode, "source": disk["selfLink"],
            "deviceName": device, "index": len(inst["disks"]), "boot": False, "autoDelete": bool(body.get("autoDelete", False)),
            "interface": "SCSI", "diskSizeGb": disk["sizeGb"], "architecture": "X86_64",
        })
        op = self._new_op(project, ("zones", zone), "attachDisk", inst)
        return self._op_response(op)

    def _instances_detach_disk(self, ctx: Ctx) -> tuple[int, dict]:
        project, zone, name = ctx.project, ctx.params["zone"], ctx.params["instance"]
        inst = self._get_instance(project, zone, name)
        device = ctx.query.get("deviceName", "")
        found = [d for d in inst.get("disks", []) if d.get("deviceName") == device]
        if not found:
            raise invalid_field("deviceName", device, f"No attached disk found with device name '{device}'")
        if found[0].get("boot"):
            raise ApiError(400, "Invalid value for field 'deviceName'. The boot disk cannot be detached.")
        inst["disks"] = [d for d in inst["disks"] if d is not found[0]]
        disk = self.disks_by_key.get((zone, found[0]["source"].rsplit("/", 1)[-1]))
        if disk is not None:
            disk["users"] = [u for u in disk.get("users", []) if u != inst["selfLink"]]
            if not disk["users"]:
                del disk["users"]
            disk["lastDetachTimestamp"] = self._ts()
        op = self._new_op(project, ("zones", zone), "detachDisk", inst)
        return self._op_response(op)
