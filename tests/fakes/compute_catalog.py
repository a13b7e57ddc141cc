"""The fake Compute Engine's world: zones, GPUs per zone, machine types, images, default quotas.

Plain data, close to what the real API reports (Nov 2026), small enough to read at a glance.
Tests may change a FakeCompute's copy (``fake.zones``, ``fake.quotas``...), never these tables.
"""

from __future__ import annotations

REGIONS = {
    "us-central1": ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"],
    "us-east1": ["us-east1-c", "us-east1-d"],
    "europe-west4": ["europe-west4-a"],
}

# accelerator type -> (description, maximumCardsPerInstance, regional quota metric)
ACCELERATORS = {
    "nvidia-tesla-t4": ("NVIDIA T4", 4, "NVIDIA_T4_GPUS"),
    "nvidia-tesla-p4": ("NVIDIA Tesla P4", 4, "NVIDIA_P4_GPUS"),
    "nvidia-tesla-p100": ("NVIDIA Tesla P100", 4, "NVIDIA_P100_GPUS"),
    "nvidia-tesla-v100": ("NVIDIA V100", 8, "NVIDIA_V100_GPUS"),
    "nvidia-l4": ("NVIDIA L4", 8, "NVIDIA_L4_GPUS"),
    "nvidia-tesla-a100": ("NVIDIA A100 40GB", 16, "NVIDIA_A100_GPUS"),
    "nvidia-a100-80gb": ("NVIDIA A100 80GB", 8, "NVIDIA_A100_80GB_GPUS"),
    "nvidia-h100-80gb": ("NVIDIA H100 80GB", 8, "NVIDIA_H100_GPUS"),
}

# zone -> accelerator types offered there (not every GPU everywhere, as in the real world)
ZONE_ACCELERATORS = {
    "us-central1-a": ["nvidia-tesla-t4", "nvidia-tesla-v100", "nvidia-l4", "nvidia-tesla-a100", "nvidia-a100-80gb", "nvidia-h100-80gb"],
    "us-central1-b": ["nvidia-tesla-t4", "nvidia-tesla-v100", "nvidia-l4", "nvidia-tesla-a100"],
    "us-central1-c": ["nvidia-tesla-t4", "nvidia-tesla-p4", "nvidia-tesla-p100", "nvidia-l4", "nvidia-tesla-a100", "nvidia-a100-80gb"],
    "us-central1-f": ["nvidia-tesla-t4", "nvidia-tesla-v100", "nvidia-tesla-p100", "nvidia-tesla-a100"],
    "us-east1-c": ["nvidia-tesla-t4", "nvidia-tesla-v100", "nvidia-tesla-p100", "nvidia-l4"],
    "us-east1-d": ["nvidia-tesla-t4", "nvidia-tesla-p100", "nvidia-l4"],
    "europe-west4-a": ["nvidia-tesla-t4", "nvidia-tesla-p4", "nvidia-tesla-v100", "nvidia-l4", "nvidia-tesla-a100", "nvidia-a100-80gb", "nvidia-h100-80gb"],
}


def _family(prefix: str, sizes: list[int], mem_per_cpu_mb: int) -> dict:
    return {f"{prefix}-{n}": (n, n * mem_per_cpu_mb, None) for n in sizes}


# machine type -> (guestCpus, memoryMb, built-in accelerators (type, count) or None)
MACHINE_TYPES: dict[str, tuple[int, int, tuple[str, int] | None]] = {
    **_family("e2-standard", [2, 4, 8, 16, 32], 4096),
    **_family("n2-standard", [2, 4, 8, 16, 32], 4096),
    **_family("n1-standard", [1, 2, 4, 8, 16, 32, 64, 96], 3840),
    **_family("n1-highmem", [2, 4, 8, 16, 32, 64, 96], 6656),
    "g2-standard-4": (4, 16384, ("nvidia-l4", 1)),
    "g2-standard-8": (8, 32768, ("nvidia-l4", 1)),
    "g2-standard-12": (12, 49152, ("nvidia-l4", 1)),
    "g2-standard-16": (16, 65536, ("nvidia-l4", 1)),
    "g2-standard-24": (24, 98304, ("nvidia-l4", 2)),
    "g2-standard-32": (32, 131072, ("nvidia-l4", 1)),
    "g2-standard-48": (48, 196608, ("nvidia-l4", 4)),
    "g2-standard-96": (96, 393216, ("nvidia-l4", 8)),
    "a2-highgpu-1g": (12, 87040, ("nvidia-tesla-a100", 1)),
    "a2-highgpu-2g": (24, 174080, ("nvidia-tesla-a100", 2)),
    "a2-highgpu-4g": (48, 348160, ("nvidia-tesla-a100", 4)),
    "a2-highgpu-8g": (96, 696320, ("nvidia-tesla-a100", 8)),
    "a2-megagpu-16g": (96, 1392640, ("nvidia-tesla-a100", 16)),
    "a2-ultragpu-1g": (12, 174080, ("nvidia-a100-80gb", 1)),
    "a2-ultragpu-2g": (24, 348160, ("nvidia-a100-80gb", 2)),
    "a2-ultragpu-4g": (48, 696320, ("nvidia-a100-80gb", 4)),
    "a2-ultragpu-8g": (96, 1392640, ("nvidia-a100-80gb", 8)),
    "a3-highgpu-1g": (26, 239616, ("nvidia-h100-80gb", 1)),
    "a3-highgpu-2g": (52, 479232, ("nvidia-h100-80gb", 2)),
    "a3-highgpu-4g": (104, 958464, ("nvidia-h100-80gb", 4)),
    "a3-highgpu-8g": (208, 1916928, ("nvidia-h100-80gb", 8)),
}

# Machine families whose instances may carry attached (guestAccelerators) GPUs of these types.
ATTACHABLE = {"n1": {"nvidia-tesla-t4", "nvidia-tesla-p4", "nvidia-tesla-p100", "nvidia-tesla-v100"}}

DISK_TYPES = ["pd-standard", "pd-balanced", "pd-ssd", "pd-extreme", "hyperdisk-balanced"]
HYPERDISK_TYPES = {"hyperdisk-balanced"}
# What the API checks on disks, as the machine series pages state it (the fake's own copy, kept
# apart from gcpdl/data/disks.json on purpose: a shared table would agree with itself).
# Hyperdisk Balanced: provisionedThroughput 140-2,400 MiB/s, provisionedIops 3,000-160,000, 4 GB+;
# not on N1 or A2 (https://cloud.google.com/compute/docs/disks/hd-types/hyperdisk-balanced).
HYPERDISK_BALANCED = {"min_mibps": 140, "max_mibps": 2400, "min_iops": 3000, "max_iops": 160000, "min_gb": 4}
NO_HYPERDISK_FAMILIES = {"n1", "a2", "n2d", "e2"}
NO_PD_STANDARD_FAMILIES = {"g2", "a3"}
# Local SSD (SCRATCH, 375 GB each): counts a machine type may list
# (https://cloud.google.com/compute/docs/disks/local-ssd#choose_number_local_ssds); A2 Ultra and
# A3 bring theirs with the machine type and list none.
LOCAL_SSD_GB = 375
LOCAL_SSD_COUNTS = {
    "n1": {1, 2, 3, 4, 5, 6, 7, 8, 16, 24},
    **{f"g2-standard-{n}": {c} for n, c in ((4, 1), (8, 1), (12, 1), (16, 1), (24, 2), (32, 1), (48, 4), (96, 8))},
    "a2-highgpu-1g": {1, 2, 4, 8}, "a2-highgpu-2g": {2, 4, 8}, "a2-highgpu-4g": {4, 8}, "a2-highgpu-8g": {8},
    "a2-megagpu-16g": {8},
}


def machine_types_in_zone(zone: str) -> list[str]:
    """General-purpose types everywhere; accelerator-optimised ones where their GPU is offered."""
    offered = set(ZONE_ACCELERATORS.get(zone, []))
    return [mt for mt, (_, _, acc) in MACHINE_TYPES.items() if acc is None or acc[0] in offered]


# Public image projects and families. Deep Learning VM families in deeplearning-platform-release
# change often; any family with one of DLVM_FAMILY_PREFIXES is also served (see FakeCompute.image).
IMAGE_FAMILIES = {
    "deeplearning-platform-release": {
        "common-cu128-ubuntu-2204-nvidia-570": 50,
        "common-cu124-debian-11-py310": 50,
        "pytorch-2-7-cu128-ubuntu-2204-nvidia-570": 60,
        "pytorch-latest-gpu-debian-11-py310": 60,
        "common-cpu-debian-11-py310": 50,
        "tf-latest-gpu-debian-11-py310": 60,
    },
    "debian-cloud": {"debian-12": 10, "debian-11": 10},
    "ubuntu-os-cloud": {"ubuntu-2204-lts": 10, "ubuntu-2404-lts-amd64": 10},
    "ubuntu-os-accelerator-images": {"ubuntu-accelerator-2204-amd64-with-nvidia-550": 50},
}
DLVM_FAMILY_PREFIXES = ("common-", "pytorch-", "tf-", "tf2-", "jax-", "base-", "cu1", "huggingface-")
DLVM_DEFAULT_GB = 50

# Default quota limits: generous enough for every happy path; tests lower them with set_quota.
PROJECT_QUOTAS = {"GPUS_ALL_REGIONS": 16.0, "FIREWALLS": 200.0, "NETWORKS": 15.0, "IMAGES": 2000.0}
REGION_QUOTAS = {
    "CPUS": 1000.0,
    "DISKS_TOTAL_GB": 40960.0,
    "SSD_TOTAL_GB": 10240.0,
    "IN_USE_ADDRESSES": 16.0,
    "INSTANCES": 1000.0,
    **{metric: 16.0 for _, _, metric in ACCELERATORS.values()},
    **{"PREEMPTIBLE_" + metric: 16.0 for _, _, metric in ACCELERATORS.values()},
}
