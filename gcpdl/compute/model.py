"""Dataclasses that cross the Compute boundary: the requests we send and the instances we read."""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field
from typing import Any

from gcpdl.spec import gpu_for_accelerator


@dataclass(frozen=True)
class ApiCall:
    """One REST request, built once: the dry-run prints it and the real run sends it.

    ``kind`` ("instances.insert", ...) tells the executor which client method takes it; the
    ``project/zone/resource`` fields are the path parameters that method wants.
    """

    kind: str
    method: str
    path: str
    body: dict[str, Any] | None = None
    project: str = ""
    zone: str | None = None
    resource: str | None = None  # instance, disk or firewall name
    query: dict[str, str] = field(default_factory=dict)
    region: str | None = None  # regional resources (resource policies)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "path": self.path}
        if self.query:
            out["query"] = dict(self.query)
        if self.body is not None:
            out["body"] = self.body
        return out


def _last(url: str | None) -> str:
    return (url or "").rstrip("/").rsplit("/", 1)[-1]


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return _dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class Instance:
    """What gcpdl needs to know about a VM, read from the REST JSON (camelCase)."""

    name: str
    zone: str
    status: str
    machine_type: str
    gpu: str | None
    gpu_count: int
    spot: bool
    external_ip: str | None = None
    internal_ip: str | None = None
    created_at: float | None = None
    last_start: float | None = None
    last_stop: float | None = None
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    metadata_fingerprint: str | None = None
    tags: list[str] = field(default_factory=list)
    disks: list[str] = field(default_factory=list)  # disk names, boot first
    boot_disk_gb: int | None = None
    instance_id: str | None = None  # the API's numeric id: keys gcpdl's known_hosts (IPs get reused)
    preempted: bool = False  # set from the last operation/status message when Spot was reclaimed
    network: str = "default"  # the VPC network of its first interface

    def summary(self) -> dict[str, Any]:
        """The fields every command's --json shows for a VM, with the same keys everywhere."""
        return {
            "name": self.name,
            "zone": self.zone,
            "state": self.state,
            "machine_type": self.machine_type,
            "gpu": self.gpu,
            "gpu_count": self.gpu_count,
            "spot": self.spot,
            "external_ip": self.external_ip,
        }

    @property
    def managed(self) -> bool:
        return self.labels.get("gcpdl") == "managed"

    @property
    def gpu_label(self) -> str:
        return f"{self.gpu}:{self.gpu_count}" if self.gpu else "none"

    @property
    def state(self) -> str:
        """Status for people: PREEMPTED when Spot capacity was reclaimed."""
        if self.preempted and self.status in ("TERMINATED", "STOPPING"):
            return "PREEMPTED"
        return self.status

    def uptime(self, now: float) -> float | None:
        if self.status != "RUNNING" or self.last_start is None:
            return None
        return max(0.0, now - self.last_start)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = self.state
        return d

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> "Instance":
        labels = dict(data.get("labels") or {})
        accels = data.get("guestAccelerators") or []
        gpu = gpu_for_accelerator(accels[0]["acceleratorType"]) if accels else None
        count = sum(int(a.get("acceleratorCount", 0)) for a in accels)
        if gpu is None:
            # G2/A2/A3 carry their GPUs in the machine type; our label says which.
            from gcpdl.spec import builtin_machine

            built = builtin_machine(_last(data.get("machineType")))
            if built:
                gpu, count = built
            elif labels.get("gcpdl-gpu") not in (None, "none"):
                gpu = labels["gcpdl-gpu"]
                count = int(labels.get("gcpdl-gpu-count", "1") or 1)
        nic = (data.get("networkInterfaces") or [{}])[0]
        access = (nic.get("accessConfigs") or [{}])[0]
        meta = data.get("metadata") or {}
        sched = data.get("scheduling") or {}
        disks = data.get("disks") or []
        boot = next((d for d in disks if d.get("boot")), None)
        return cls(
            name=data["name"],
            zone=_last(data.get("zone")),
            status=data.get("status", "UNKNOWN"),
            machine_type=_last(data.get("machineType")),
            gpu=gpu,
            gpu_count=count if gpu else 0,
            spot=sched.get("provisioningModel") == "SPOT" or bool(sched.get("preemptible")),
            external_ip=access.get("natIP"),
            internal_ip=nic.get("networkIP"),
            created_at=_parse_time(data.get("creationTimestamp")),
            last_start=_parse_time(data.get("lastStartTimestamp")),
            last_stop=_parse_time(data.get("lastStopTimestamp")),
            labels=labels,
            metadata={i["key"]: i.get("value", "") for i in meta.get("items") or []},
            metadata_fingerprint=meta.get("fingerprint"),
            tags=list((data.get("tags") or {}).get("items") or []),
            disks=[_last(d.get("source")) for d in sorted(disks, key=lambda d: not d.get("boot"))],
            boot_disk_gb=int(boot["diskSizeGb"]) if boot and boot.get("diskSizeGb") else None,
            instance_id=str(data["id"]) if data.get("id") else None,
            network=_last(nic.get("network")) or "default",
        )


@dataclass
class ZoneAttempt:
    zone: str
    outcome: str  # "created", "stockout", "quota", "not offered", ...
    detail: str = ""


@dataclass
class UpResult:
    """What `up` did; the CLI renders it. ``ssh`` is filled by the SSH step (issue 3)."""

    instance: Instance
    action: str  # "created", "started", "reused"
    price_per_hour: float
    attempts: list[ZoneAttempt] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    firewall_rule: str | None = None
    ssh_from: str | None = None
    ssh: Any = None
    api_calls: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.instance.summary(),
            "action": self.action,
            "price_per_hour": self.price_per_hour,
            "zones_tried": [asdict(a) for a in self.attempts],
            "differences": self.differences,
            "firewall_rule": self.firewall_rule,
            "ssh_from": self.ssh_from,
            "ready": self.ssh.as_dict() if hasattr(self.ssh, "as_dict") else self.ssh,
        }
