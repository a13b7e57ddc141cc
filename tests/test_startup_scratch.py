"""The startup script's scratch step (`up --local-ssd N`): wait (bounded) for the local NVMe SSDs,
stripe them (RAID 0; one device is formatted as it is), mount them at /scratch, and do the right
thing on each later boot: a reboot keeps their content (assemble, never re-create over it), a
stop/start leaves them blank (create and format again).

Run for real in tests/test_startup_template.py's harness: the devices are plain files named like
the guest environment's links, and mdadm, blkid, mkfs.ext4 and mount are stubs that keep their
state in marker files (no root, no loop devices, nothing outside a temporary folder)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gcpdl.startup import StartupOptions, render_startup_script
from tests.test_startup_template import Vm, _stub


class ScratchVm(Vm):
    """A Vm with N local SSDs. Markers: DEV.md (the device carries an md superblock),
    TARGET.fs (a filesystem is on it); the array is a file in md/ while assembled."""

    def __init__(self, devices: int, appear_after_sleeps: int = 0):
        super().__init__()
        self.dev = self.root / "dev"
        self.dev.mkdir()
        self.md = self.root / "md"
        self.md.mkdir()
        self.devices = [self.dev / f"google-local-nvme-ssd-{i}" for i in range(devices)]
        log = f'echo "$(basename "$0") $*" >> {self.calls}\n'
        if appear_after_sleeps:
            # the devices' links appear only after the script has slept this many times
            (self.root / "sleeps").write_text("0\n")
            _stub(self.bin, "sleep-stub", f'echo $(( $(cat {self.clock}) + $1 )) > {self.clock}\n'
                  f'n=$(( $(cat {self.root}/sleeps) + 1 )); echo $n > {self.root}/sleeps\n'
                  f'if [ "$n" -ge {appear_after_sleeps} ]; then touch {" ".join(map(str, self.devices))}; fi\n')
        else:
            self.attach()
        _stub(self.bin, "mdadm", log + """
case "$1" in
  --examine) [ -f "$2.md" ] ;;
  --assemble) t=$2; shift 2; for d in "$@"; do [ -f "$d.md" ] || exit 1; done; touch "$t" ;;
  --create) t=$2; shift; for a in "$@"; do case "$a" in -*|"$t") ;; *) touch "$a.md" ;; esac; done; touch "$t" ;;
  *) exit 2 ;;
esac
""")
        _stub(self.bin, "blkid", log + '[ -f "$1.fs" ]\n')
        _stub(self.bin, "mkfs.ext4", log + 'for a in "$@"; do t=$a; done; touch "$t.fs"\n')
        _stub(self.bin, "mountpoint", f'[ -f {self.root}/mounted ]\n')
        _stub(self.bin, "mount", log + f"touch {self.root}/mounted\n")
        _stub(self.bin, "chown", log)

    def attach(self) -> None:
        for d in self.devices:
            d.touch()

    def reboot(self) -> None:
        """Content survives; the array must be put together again, nothing is mounted."""
        (self.md / "gcpdl-scratch").unlink(missing_ok=True)
        (self.root / "mounted").unlink(missing_ok=True)
        self.calls.write_text("")

    def stop_start(self) -> None:
        """Local SSD content is discarded: blank devices, no array, no filesystem."""
        self.reboot()
        for p in list(self.dev.iterdir()) + list(self.md.iterdir()):
            if p.suffix in (".md", ".fs"):
                p.unlink()

    def env(self) -> dict[str, str]:
        return dict(super().env(), GCPDL_NVME_GLOB=f"{self.dev}/google-local-nvme-ssd-*", GCPDL_MD_DIR=str(self.md),
                    GCPDL_SCRATCH_MOUNT=str(self.root / "scratch"))

    def boot(self, count: int, wait: int = 120):
        script = self.script(gpu=False, local_ssd=count, scratch_wait_seconds=wait)
        return self.run(script, "prepare_scratch")


@pytest.fixture
def make_vm():
    made: list[ScratchVm] = []

    def make(devices: int, **kw) -> ScratchVm:
        made.append(ScratchVm(devices, **kw))
        return made[-1]

    yield make
    for vm in made:
        vm.close()


def test_four_ssds_are_striped_formatted_and_mounted(make_vm):
    vm = make_vm(4)
    (vm.dev / "google-local-nvme-ssd-0-part1").touch()  # a partition's link is not a device
    r = vm.boot(4)
    assert r.returncode == 0, r.stderr
    create = vm.called("mdadm")[-1].split()
    assert create[1:3] == ["--create", f"{vm.md}/gcpdl-scratch"] and "--level=0" in create and "--raid-devices=4" in create
    assert create[-4:] == [str(d) for d in vm.devices]
    assert vm.called("mkfs.ext4") and vm.called("mkfs.ext4")[0].endswith(f"{vm.md}/gcpdl-scratch")
    assert vm.called("mount") == [f"mount -o discard,defaults {vm.md}/gcpdl-scratch {vm.root / 'scratch'}"]
    assert vm.called("chown") == [f"chown {vm.user}: {vm.root / 'scratch'}"]


def test_a_reboot_assembles_the_array_and_never_formats_it_again(make_vm):
    vm = make_vm(2)
    assert vm.boot(2).returncode == 0
    vm.reboot()
    r = vm.boot(2)
    assert r.returncode == 0, r.stderr
    assert [c.split()[1] for c in vm.called("mdadm")] == ["--examine", "--examine", "--assemble"]
    assert vm.called("mkfs.ext4") == [] and len(vm.called("mount")) == 1


def test_a_running_array_is_used_as_it_is(make_vm):
    vm = make_vm(2)
    assert vm.boot(2).returncode == 0
    (vm.root / "mounted").unlink()
    vm.calls.write_text("")
    r = vm.boot(2)  # the startup script again, the array still assembled (as after a udev pass)
    assert r.returncode == 0, r.stderr
    assert vm.called("mdadm") == [] and vm.called("mkfs.ext4") == []


def test_after_a_stop_the_blank_ssds_are_made_again(make_vm):
    vm = make_vm(2)
    assert vm.boot(2).returncode == 0
    vm.stop_start()
    r = vm.boot(2)
    assert r.returncode == 0, r.stderr
    assert "--create" in vm.called("mdadm")[-1] and len(vm.called("mkfs.ext4")) == 1


def test_an_array_that_will_not_assemble_is_an_error_not_a_new_array(make_vm):
    vm = make_vm(2)
    assert vm.boot(2).returncode == 0
    vm.reboot()
    (vm.devices[1].parent / (vm.devices[1].name + ".md")).unlink()  # one member lost its superblock
    r = vm.boot(2)
    assert r.returncode == 1
    assert not [c for c in vm.called("mdadm") if "--create" in c] and vm.called("mkfs.ext4") == []
    assert "could not be assembled (1 of 2 devices carry it); not re-creating it over data" in vm.metadata.attrs["gcpdl/error"]


def test_one_ssd_is_formatted_as_it_is_and_kept_across_a_reboot(make_vm):
    vm = make_vm(1)
    assert vm.boot(1).returncode == 0
    assert vm.called("mdadm") == [] and vm.called("mkfs.ext4")[0].endswith(str(vm.devices[0]))
    vm.reboot()
    assert vm.boot(1).returncode == 0
    assert vm.called("mkfs.ext4") == [] and len(vm.called("mount")) == 1
    vm.stop_start()
    assert vm.boot(1).returncode == 0
    assert len(vm.called("mkfs.ext4")) == 1


def test_the_devices_are_waited_for(make_vm):
    vm = make_vm(2, appear_after_sleeps=3)
    r = vm.boot(2)
    assert r.returncode == 0, r.stderr
    assert "--create" in vm.called("mdadm")[-1]


def test_devices_that_never_appear_are_a_clear_error_within_the_bound(make_vm):
    vm = make_vm(2, appear_after_sleeps=10**6)
    start = int(vm.clock.read_text())
    r = vm.boot(2, wait=10)
    assert r.returncode == 1
    assert vm.metadata.attrs["gcpdl/error"].startswith("only 0 of 2 local SSDs appeared")
    assert int(vm.clock.read_text()) - start <= 10 + 2 + 30  # its own bound (plus the error's verified write)


def test_main_runs_the_scratch_step_only_with_local_ssds():
    with_ssd = render_startup_script(StartupOptions(local_ssd=2))
    assert "LOCAL_SSD=2 " in with_ssd and 'stage scratch' in with_ssd
    assert "LOCAL_SSD=0 " in render_startup_script(StartupOptions())


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_the_scratch_variant_passes_shellcheck(tmp_path: Path):
    import subprocess

    script = tmp_path / "s.sh"
    script.write_text(render_startup_script(StartupOptions(local_ssd=4, data_disk=True)))
    r = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
