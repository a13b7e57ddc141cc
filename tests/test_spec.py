"""The GPU catalogue and every flag mistake caught before the network."""

from __future__ import annotations

import pytest

from gcpdl.errors import InvalidInput
from gcpdl.spec import GPUS, build_spec, builtin_machine, parse_autostop, parse_gpu


@pytest.mark.parametrize(
    "gpu, machine, accel, count",
    [
        ("t4", "n1-standard-8", "nvidia-tesla-t4", 1),
        ("t4:2", "n1-standard-16", "nvidia-tesla-t4", 2),
        ("v100:8", "n1-standard-64", "nvidia-tesla-v100", 8),
        ("p100", "n1-standard-8", "nvidia-tesla-p100", 1),
        ("l4", "g2-standard-8", "nvidia-l4", 1),
        ("l4:2", "g2-standard-24", "nvidia-l4", 2),
        ("a100:4", "a2-highgpu-4g", "nvidia-tesla-a100", 4),
        ("a100-80gb", "a2-ultragpu-1g", "nvidia-a100-80gb", 1),
        ("h100:8", "a3-highgpu-8g", "nvidia-h100-80gb", 8),
    ],
)
def test_default_machine_per_gpu_and_count(gpu, machine, accel, count):
    spec = build_spec("box", gpu=gpu)
    assert (spec.machine_type, spec.accelerator, spec.gpu_count) == (machine, accel, count)
    assert spec.image_project == "deeplearning-platform-release"


def test_builtin_machines_match_catalogue():
    for gpu in GPUS.values():
        if not gpu.attached:
            for count, machine in gpu.machines.items():
                assert builtin_machine(machine) == (gpu.key, count)


def test_machine_override_takes_count_from_builtin_machine():
    assert build_spec("box", gpu="l4", machine="g2-standard-48").gpu_count == 4
    assert build_spec("box", gpu="t4", machine="n1-highmem-8").machine_type == "n1-highmem-8"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "Box", "gpu": "t4"}, "Invalid VM name 'Box': use 1-63 lowercase letters, digits or hyphens, starting with a letter and not ending with a hyphen."),
        ({"name": "a" * 64, "gpu": "t4"}, None),
        ({"name": "box-", "gpu": "t4"}, None),
        ({"name": "9box", "gpu": "t4"}, None),
        ({"name": "box", "gpu": "k80"}, "Unknown GPU 'k80'. Choose one of: t4, p4, p100, v100, l4, a100, a100-80gb, h100."),
        ({"name": "box", "gpu": "t4:3"}, "A VM can have 1, 2, 4 t4 GPUs, not 3."),
        ({"name": "box", "gpu": "t4:x"}, "Invalid GPU count 'x' in 't4:x': expected a whole number."),
        ({"name": "box", "gpu": "t4", "machine": "e2-standard-8"}, "t4 GPUs attach only to N1 machine types (e.g. n1-standard-8), not e2-standard-8."),
        ({"name": "box", "gpu": "v100", "machine": "n1-standard-16"}, "n1-standard-16 has 16 vCPUs; with 1 v100 GPU(s) the maximum is 12."),
        ({"name": "box", "gpu": "a100", "machine": "g2-standard-8"}, "Machine type g2-standard-8 cannot take a100 GPUs; use one of: a2-highgpu-1g, a2-highgpu-2g, a2-highgpu-4g, a2-highgpu-8g, a2-megagpu-16g."),
        ({"name": "box", "gpu": "l4:2", "machine": "g2-standard-8"}, "Machine type g2-standard-8 has 1 l4 GPU(s), not 2."),
        ({"name": "box", "cpu_only": True, "machine": "a2-highgpu-1g"}, "Machine type a2-highgpu-1g comes with 1 a100 GPU(s); use --gpu a100:1 instead of --cpu-only."),
        ({"name": "box", "gpu": "t4", "cpu_only": True}, "Choose either --gpu or --cpu-only, not both."),
        ({"name": "box", "gpu": "t4", "disk": "20"}, "--disk 20 GB is smaller than the 50 GB image pytorch-2-7-cu128-ubuntu-2204-nvidia-570; use --disk 50 or more."),
        ({"name": "box", "gpu": "t4", "disk": "lots"}, "Invalid --disk 'lots': expected a size in GB like 200 or 1TB."),
        ({"name": "box", "gpu": "l4", "disk_type": "pd-standard"}, "g2-standard-8 cannot boot from pd-standard; use pd-balanced or pd-ssd."),
        ({"name": "box", "gpu": "t4", "disk_type": "floppy"}, "Unknown disk type 'floppy'. Choose one of: pd-standard, pd-balanced, pd-ssd, pd-extreme, hyperdisk-balanced."),
        ({"name": "box", "gpu": "t4", "ssh_from": "10.0.0.300/8"}, "Invalid --ssh-from '10.0.0.300/8': expected an IPv4 address or range like 203.0.113.7/32."),
        ({"name": "box", "gpu": "t4", "autostop": "soon"}, "Invalid --autostop 'soon': expected minutes like 60m, hours like 2h, or off."),
        ({"name": "a" * 60, "gpu": "t4", "data_disk": "100"}, None),
    ],
)
def test_invalid_input_is_caught_offline(kwargs, message):
    with pytest.raises(InvalidInput) as info:
        build_spec(**kwargs)
    if message:
        assert str(info.value) == message


def test_parsers():
    assert parse_gpu("A100:2") == ("a100", 2)
    assert parse_gpu("t4") == ("t4", None)
    assert parse_autostop(None) == 60
    assert parse_autostop("2h") == 120
    assert parse_autostop("off") is None
    spec = build_spec("box", gpu="t4", disk="1TB", data_disk="200GB", ssh_from="203.0.113.7")
    assert (spec.disk_gb, spec.data_disk_gb, spec.ssh_from) == (1024, 200, "203.0.113.7/32")


def test_custom_image_skips_the_offline_size_check():
    spec = build_spec("box", cpu_only=True, image_family="debian-12", image_project="debian-cloud", disk="10")
    assert (spec.image_family, spec.disk_gb, spec.gpu) == ("debian-12", 10, None)


def test_no_gpu_flag_means_t4_but_not_a_stated_wish():
    spec = build_spec("box")
    assert (spec.gpu, spec.gpu_count, spec.machine_type, spec.gpu_given) == ("t4", 1, "n1-standard-8", False)
    assert build_spec("box", gpu="t4").gpu_given is True
