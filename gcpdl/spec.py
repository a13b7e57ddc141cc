"""What the user asked for, checked without the network: the GPU catalogue and ``VmSpec``.

Everything here is pure and fast (no Google import): `up --dry-run` builds its plan from this
module alone, and every mistake a user can make in flags is caught here, before the first API
call. Zone-dependent checks (is the GPU offered in this zone, how many) need the API and live in
``gcpdl.compute.zones``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from gcpdl.errors import InvalidInput
from gcpdl.settings import ZONE_RE, parse_project
from gcpdl.settings import escaped as _show

# Deep Learning VM images (https://cloud.google.com/deep-learning-vm/docs/images). Families are
# named framework-version-cuda-os-driver; the 570 driver branch still supports Pascal (P4/P100)
# and Volta (V100), which CUDA 13 / the 580+ branches are dropping, so one family serves every GPU.
IMAGE_PROJECT = "deeplearning-platform-release"
GPU_IMAGE_FAMILY = "pytorch-2-7-cu128-ubuntu-2204-nvidia-570"
CPU_IMAGE_FAMILY = "common-cpu-ubuntu-2204"
# The DLVM GPU images are 50 GB; a smaller boot disk is refused by the API after quota checks,
# so say it up front. A custom --image-family is checked by the API instead.
DLVM_IMAGE_GB = 50

DEFAULT_DISK_GB = 100
DEFAULT_DISK_TYPE = "pd-balanced"
DEFAULT_CPU_MACHINE = "n1-standard-8"
DEFAULT_GPU = "t4"  # the cheapest current GPU; used when `up` is given neither --gpu nor --cpu-only
DEFAULT_AUTOSTOP_MINUTES = 60
MAX_DISK_GB = 65536
DISK_TYPES = ("pd-standard", "pd-balanced", "pd-ssd", "pd-extreme", "hyperdisk-balanced")
# G2 and A3 machines do not take pd-standard (https://cloud.google.com/compute/docs/disks#disk-types).
NO_PD_STANDARD_FAMILIES = ("g2", "a3")
SSH_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"

# Checked with fullmatch everywhere: `$` also matches before a trailing newline ("box\n").
_NAME_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_ZONE_RE = ZONE_RE
_MACHINE_RE = re.compile(r"[a-z][a-z0-9]*-[a-z0-9-]+")
_IMAGE_FAMILY_RE = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
# Compute Engine accepts scheduling.maxRunDuration from 30 seconds to 120 days
# (https://cloud.google.com/compute/docs/instances/limit-vm-runtime).
MIN_RUN_SECONDS = 30
MAX_RUN_SECONDS = 120 * 24 * 3600
_N1_RE = re.compile(r"^n1-(standard|highmem|highcpu)-([0-9]+)$")
_N1_CUSTOM_RE = re.compile(r"^n1-custom-([0-9]+)-[0-9]+$|^custom-([0-9]+)-[0-9]+$")


@dataclass(frozen=True)
class Gpu:
    """One catalogue entry. ``attached`` GPUs (T4/P4/P100/V100) ride on an N1 machine and go in
    ``guestAccelerators``; built-in ones (L4/A100/H100) come with the machine type itself."""

    key: str
    accelerator: str  # Compute accelerator type name
    family: str  # machine family the GPU needs: n1, g2, a2, a3
    attached: bool
    machines: dict[int, str]  # count -> default machine type
    max_vcpus: dict[int, int] = field(default_factory=dict)  # N1 only: count -> vCPU ceiling
    label: str = ""

    @property
    def quota_metric(self) -> str:
        """Regional quota metric (PREEMPTIBLE_ + this for Spot)."""
        return {"t4": "NVIDIA_T4_GPUS", "p4": "NVIDIA_P4_GPUS", "p100": "NVIDIA_P100_GPUS", "v100": "NVIDIA_V100_GPUS",
                "l4": "NVIDIA_L4_GPUS", "a100": "NVIDIA_A100_GPUS", "a100-80gb": "NVIDIA_A100_80GB_GPUS",
                "h100": "NVIDIA_H100_GPUS"}[self.key]

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(sorted(self.machines))


# vCPU ceilings per GPU count on N1 from https://cloud.google.com/compute/docs/gpus (the smallest
# figure across zones, so a machine accepted here is accepted everywhere).
GPUS: dict[str, Gpu] = {
    g.key: g
    for g in (
        Gpu("t4", "nvidia-tesla-t4", "n1", True,
            {1: "n1-standard-8", 2: "n1-standard-16", 4: "n1-standard-32"},
            {1: 48, 2: 48, 4: 96}, "NVIDIA T4 16 GB"),
        Gpu("p4", "nvidia-tesla-p4", "n1", True,
            {1: "n1-standard-8", 2: "n1-standard-16", 4: "n1-standard-32"},
            {1: 24, 2: 48, 4: 96}, "NVIDIA P4 8 GB"),
        Gpu("p100", "nvidia-tesla-p100", "n1", True,
            {1: "n1-standard-8", 2: "n1-standard-16", 4: "n1-standard-32"},
            {1: 16, 2: 32, 4: 64}, "NVIDIA P100 16 GB"),
        Gpu("v100", "nvidia-tesla-v100", "n1", True,
            {1: "n1-standard-8", 2: "n1-standard-16", 4: "n1-standard-32", 8: "n1-standard-64"},
            {1: 12, 2: 24, 4: 48, 8: 96}, "NVIDIA V100 16 GB"),
        # g2-standard-4 has 16 GB of RAM, too little to feed an L4; -8 is the sensible single.
        Gpu("l4", "nvidia-l4", "g2", False,
            {1: "g2-standard-8", 2: "g2-standard-24", 4: "g2-standard-48", 8: "g2-standard-96"},
            label="NVIDIA L4 24 GB"),
        Gpu("a100", "nvidia-tesla-a100", "a2", False,
            {1: "a2-highgpu-1g", 2: "a2-highgpu-2g", 4: "a2-highgpu-4g", 8: "a2-highgpu-8g", 16: "a2-megagpu-16g"},
            label="NVIDIA A100 40 GB"),
        Gpu("a100-80gb", "nvidia-a100-80gb", "a2", False,
            {1: "a2-ultragpu-1g", 2: "a2-ultragpu-2g", 4: "a2-ultragpu-4g", 8: "a2-ultragpu-8g"},
            label="NVIDIA A100 80 GB"),
        Gpu("h100", "nvidia-h100-80gb", "a3", False,
            {1: "a3-highgpu-1g", 2: "a3-highgpu-2g", 4: "a3-highgpu-4g", 8: "a3-highgpu-8g"},
            label="NVIDIA H100 80 GB"),
    )
}
# Built-in GPU machine types that are not a catalogue default but still valid for --machine.
_BUILTIN_EXTRA: dict[str, tuple[str, int]] = {
    **{f"g2-standard-{n}": ("l4", 1) for n in (4, 8, 12, 16, 32)},
    "g2-standard-24": ("l4", 2), "g2-standard-48": ("l4", 4), "g2-standard-96": ("l4", 8),
}
# A3 High with fewer than 8 GPUs is sold only as Spot or Flex-start.
SPOT_ONLY_MACHINES = {"a3-highgpu-1g", "a3-highgpu-2g", "a3-highgpu-4g"}


def builtin_machine(machine: str) -> tuple[str, int] | None:
    """(gpu key, count) for a machine type that has GPUs built in, else None."""
    if machine in _BUILTIN_EXTRA:
        return _BUILTIN_EXTRA[machine]
    for gpu in GPUS.values():
        if gpu.attached:
            continue
        for count, m in gpu.machines.items():
            if m == machine:
                return gpu.key, count
    return None


def gpu_for_accelerator(accelerator_type: str) -> str | None:
    """Catalogue key for an accelerator type name or URL (.../acceleratorTypes/nvidia-tesla-t4)."""
    name = accelerator_type.rsplit("/", 1)[-1]
    for gpu in GPUS.values():
        if gpu.accelerator == name:
            return gpu.key
    return None


@dataclass(frozen=True)
class VmSpec:
    """A validated request for one VM. Crosses from the CLI into the Compute adapter."""

    name: str
    gpu: str | None  # catalogue key; None for --cpu-only
    gpu_count: int
    machine_type: str
    image_family: str
    image_project: str
    disk_gb: int
    disk_type: str
    data_disk_gb: int | None = None
    spot: bool = False
    autostop_minutes: int | None = DEFAULT_AUTOSTOP_MINUTES  # None: off
    max_hours: float | None = None
    ssh_from: str | None = None  # CIDR; None: the caller's address /32, looked up at run time
    network: str = "default"  # the VPC network the VM and its firewall rules live in
    subnet: str | None = None  # its subnetwork; None: the region's own (auto mode) or its only one
    # what the user said explicitly: only those count as differences from an existing VM
    gpu_given: bool = True  # False: DEFAULT_GPU was assumed
    disk_given: bool = True  # False: DEFAULT_DISK_GB was assumed

    @property
    def catalogue(self) -> Gpu | None:
        return GPUS[self.gpu] if self.gpu else None

    @property
    def accelerator(self) -> str | None:
        return GPUS[self.gpu].accelerator if self.gpu else None

    @property
    def attached_gpu(self) -> bool:
        return bool(self.gpu) and GPUS[self.gpu].attached  # type: ignore[index]

    @property
    def data_disk_name(self) -> str:
        return f"{self.name}-data"

    @property
    def gpu_label(self) -> str:
        return f"{self.gpu}:{self.gpu_count}" if self.gpu else "none"

    def disks(self) -> tuple[tuple[int, str], ...]:
        """(size, type) pairs, the shape pricing.hourly_price takes."""
        out = [(self.disk_gb, self.disk_type)]
        if self.data_disk_gb:
            out.append((self.data_disk_gb, DEFAULT_DISK_TYPE))
        return tuple(out)


# --- validation helpers (each raises InvalidInput with the exact message the CLI prints) ----
def validate_name(name: str, what: str = "VM name") -> str:
    if not isinstance(name, str) or len(name) > 63 or not _NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"Invalid {what} '{_show(name)}': use 1-63 lowercase letters, digits or hyphens, "
            "starting with a letter and not ending with a hyphen."
        )
    return name


def validate_zone(zone: str) -> str:
    if not _ZONE_RE.fullmatch(zone):
        raise InvalidInput(f"Invalid zone '{zone}': expected a zone like us-central1-a.")
    return zone


def parse_gpu(value: str) -> tuple[str, int | None]:
    """'t4' -> ('t4', None); 'a100:4' -> ('a100', 4). Count None means 'not given'."""
    raw = value.strip().lower()
    if not raw:
        raise InvalidInput(f"Invalid --gpu '{_show(value)}': choose one of: {', '.join(GPUS)}, with an optional count (t4:2).")
    key, colon, count_s = raw.partition(":")
    if key not in GPUS:
        raise InvalidInput(f"Unknown GPU '{_show(key)}'. Choose one of: {', '.join(GPUS)}.")
    if not colon:
        return key, None
    if not count_s.isdigit() or int(count_s) == 0:
        raise InvalidInput(f"Invalid GPU count '{_show(count_s)}' in '{_show(value)}': expected a whole number.")
    count = int(count_s)
    gpu = GPUS[key]
    if count not in gpu.machines:
        counts = ", ".join(str(c) for c in gpu.counts)
        raise InvalidInput(f"A VM can have {counts} {key} GPUs, not {count}.")
    return key, count


def parse_autostop(value: str | None, what: str = "--autostop") -> int | None:
    """'60m', '2h', '90', 'off' -> minutes (None for off)."""
    if value is None:
        return DEFAULT_AUTOSTOP_MINUTES
    raw = value.strip().lower()
    if raw in ("off", "none", "0", "never"):
        return None
    m = re.fullmatch(r"([0-9]+)\s*(m|min|h)?", raw)
    if not m:
        raise InvalidInput(f"Invalid {what} '{value}': expected minutes like 60m, hours like 2h, or off.")
    minutes = int(m.group(1)) * (60 if m.group(2) == "h" else 1)
    if minutes < 5 or minutes > 7 * 24 * 60:
        raise InvalidInput(f"Invalid {what} '{value}': choose between 5m and 168h, or off.")
    return minutes


def parse_size_gb(value: str | int, what: str) -> int:
    """'200', '200GB', '1TB' -> GB."""
    raw = str(value).strip().upper().replace(" ", "")
    m = re.fullmatch(r"([0-9]+)(GB|G|GIB|TB|T|TIB)?", raw)
    if not m:
        raise InvalidInput(f"Invalid {what} '{value}': expected a size in GB like 200 or 1TB.")
    size = int(m.group(1)) * (1024 if (m.group(2) or "").startswith("T") else 1)
    if size < 10 or size > MAX_DISK_GB:
        raise InvalidInput(f"Invalid {what} '{value}': choose between 10 GB and {MAX_DISK_GB} GB.")
    return size


def validate_cidr(value: str) -> str:
    from gcpdl.settings import parse_cidr

    try:
        return parse_cidr(value)
    except ValueError as e:
        raise InvalidInput(f"Invalid --ssh-from '{_show(value)}': {e}.") from None


def _given(value: str | None, flag: str) -> str | None:
    """None when the flag was not given; an empty or blank value is an error, not "not given"."""
    if value is not None and not value.strip():
        raise InvalidInput(f"Invalid {flag} '{_show(value)}': it is empty.")
    return value


def n1_vcpus(machine: str) -> int | None:
    m = _N1_RE.match(machine)
    if m:
        return int(m.group(2))
    m = _N1_CUSTOM_RE.match(machine)
    if m:
        return int(m.group(1) or m.group(2))
    return None


def _check_machine(gpu: Gpu | None, count: int, machine: str) -> None:
    if not _MACHINE_RE.fullmatch(machine):
        raise InvalidInput(f"Invalid machine type '{machine}'.")
    if gpu is None:
        built = builtin_machine(machine)
        if built:
            raise InvalidInput(
                f"Machine type {machine} comes with {built[1]} {built[0]} GPU(s); use --gpu {built[0]}:{built[1]} instead of --cpu-only."
            )
        return
    if gpu.attached:
        vcpus = n1_vcpus(machine)
        if vcpus is None:
            raise InvalidInput(f"{gpu.key} GPUs attach only to N1 machine types (e.g. {gpu.machines[count]}), not {machine}.")
        ceiling = gpu.max_vcpus[count]
        if vcpus > ceiling:
            raise InvalidInput(f"{machine} has {vcpus} vCPUs; with {count} {gpu.key} GPU(s) the maximum is {ceiling}.")
        return
    built = builtin_machine(machine)
    if built is None or built[0] != gpu.key:
        choices = ", ".join(gpu.machines[c] for c in gpu.counts)
        raise InvalidInput(f"Machine type {machine} cannot take {gpu.key} GPUs; use one of: {choices}.")
    if built[1] != count:
        raise InvalidInput(f"Machine type {machine} has {built[1]} {gpu.key} GPU(s), not {count}.")


def build_spec(
    name: str,
    gpu: str | None = None,
    cpu_only: bool = False,
    machine: str | None = None,
    image_family: str | None = None,
    image_project: str | None = None,
    disk: str | int | None = None,
    disk_type: str | None = None,
    data_disk: str | int | None = None,
    spot: bool = False,
    autostop: str | None = None,
    max_hours: float | None = None,
    ssh_from: str | None = None,
    network: str | None = None,
    subnet: str | None = None,
) -> VmSpec:
    """Validate flags into a VmSpec; raise InvalidInput with a one-line message otherwise."""
    validate_name(name)
    if gpu is not None and not gpu.strip():
        parse_gpu(gpu)  # the one message for an empty --gpu
    machine, image_family, image_project, disk_type = (
        _given(machine, "--machine"), _given(image_family, "--image-family"),
        _given(image_project, "--image-project"), _given(disk_type, "--disk-type"),
    )
    ssh_from = _given(ssh_from, "--ssh-from")
    if image_family is not None and not _IMAGE_FAMILY_RE.fullmatch(image_family):
        raise InvalidInput(f"Invalid --image-family '{_show(image_family)}': expected an image family like {GPU_IMAGE_FAMILY}.")
    if image_project is not None:
        try:
            parse_project(image_project)
        except ValueError as e:
            raise InvalidInput(f"Invalid --image-project '{_show(image_project)}': {e}.") from None
    if gpu and cpu_only:
        raise InvalidInput("Choose either --gpu or --cpu-only, not both.")
    # `gcpdl up box` with no GPU flag: restart box as it is, or create it with the cheapest GPU
    gpu_given = bool(gpu or cpu_only or machine)
    if not gpu and not cpu_only:
        gpu = DEFAULT_GPU
    entry: Gpu | None = None
    count = 0
    if gpu:
        key, given = parse_gpu(gpu)
        entry = GPUS[key]
        if given is None and machine and not entry.attached:
            built = builtin_machine(machine)
            given = built[1] if built and built[0] == key else 1
        count = given or 1
    machine_type = machine.strip().lower() if machine else (entry.machines[count] if entry else DEFAULT_CPU_MACHINE)
    _check_machine(entry, count, machine_type)

    dtype = (disk_type or DEFAULT_DISK_TYPE).strip().lower()
    if dtype not in DISK_TYPES:
        raise InvalidInput(f"Unknown disk type '{dtype}'. Choose one of: {', '.join(DISK_TYPES)}.")
    if dtype == "pd-standard" and machine_type.split("-", 1)[0] in NO_PD_STANDARD_FAMILIES:
        raise InvalidInput(f"{machine_type} cannot boot from pd-standard; use pd-balanced or pd-ssd.")
    disk_gb = parse_size_gb(disk, "--disk") if disk is not None else DEFAULT_DISK_GB
    family = image_family or (GPU_IMAGE_FAMILY if entry else CPU_IMAGE_FAMILY)
    project = image_project or IMAGE_PROJECT
    if image_family is None and image_project is None and disk_gb < DLVM_IMAGE_GB:
        raise InvalidInput(f"--disk {disk_gb} GB is smaller than the {DLVM_IMAGE_GB} GB image {family}; use --disk {DLVM_IMAGE_GB} or more.")
    data_gb = parse_size_gb(data_disk, "--data-disk") if data_disk is not None else None
    if data_gb is not None:
        validate_name(f"{name}-data", "data disk name (NAME-data)")
    if max_hours is not None and not (math.isfinite(max_hours) and MIN_RUN_SECONDS <= round(max_hours * 3600) <= MAX_RUN_SECONDS):
        raise InvalidInput(
            f"Invalid --max-hours {max_hours:g}: Compute Engine accepts a run time from {MIN_RUN_SECONDS} seconds "
            f"({math.ceil(MIN_RUN_SECONDS / 3600 * 1e4) / 1e4:g} hours) to {MAX_RUN_SECONDS // 86400} days ({MAX_RUN_SECONDS // 3600} hours)."
        )
    cidr = validate_cidr(ssh_from) if ssh_from is not None else None
    net = validate_name(network.strip(), "--network name") if network is not None else "default"
    sub = validate_name(subnet.strip(), "--subnet name") if subnet is not None else None
    return VmSpec(
        name=name,
        gpu=entry.key if entry else None,
        gpu_count=count,
        machine_type=machine_type,
        image_family=family,
        image_project=project,
        disk_gb=disk_gb,
        disk_type=dtype,
        data_disk_gb=data_gb,
        spot=spot,
        autostop_minutes=parse_autostop(autostop),
        max_hours=max_hours,
        ssh_from=cidr,
        network=net,
        subnet=sub,
        gpu_given=gpu_given,
        disk_given=disk is not None,
    )
