"""The VM startup script: every variant passes shellcheck, and its bash functions do what they
say when run for real (against a local metadata stand-in, stub nvidia-smi, temp fstab)."""

from __future__ import annotations

import http.server
import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from gcpdl.errors import InvalidInput
from gcpdl.startup import StartupOptions, render_startup_script

VARIANTS = {
    "gpu-disk-autostop": StartupOptions(gpu=True, data_disk=True, autostop_minutes=60),
    "gpu-nodisk-noautostop": StartupOptions(gpu=True, data_disk=False, autostop_minutes=None),
    "cpu-disk-noautostop": StartupOptions(gpu=False, data_disk=True, autostop_minutes=None),
    "cpu-nodisk-autostop": StartupOptions(gpu=False, data_disk=False, autostop_minutes=30),
}


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (apt-get install shellcheck)")
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_pass_shellcheck(variant: str, tmp_path: Path):
    script = tmp_path / f"{variant}.sh"
    script.write_text(render_startup_script(VARIANTS[variant]))
    r = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_variants_differ_where_they_should():
    gpu = render_startup_script(VARIANTS["gpu-disk-autostop"])
    cpu = render_startup_script(VARIANTS["cpu-nodisk-autostop"])
    assert "GPU=1" in gpu and "DATA_DISK=1" in gpu and "RequiresMountsFor=/data" in gpu
    assert "GPU=0" in cpu and "DATA_DISK=0" in cpu and "RequiresMountsFor" not in cpu
    assert "stage autostop" in cpu
    # autostop off still installs the agent (with its default window off), so a later
    # `gcpdl autostop NAME 30m` works on a VM created with `--autostop off`
    off = render_startup_script(VARIANTS["gpu-nodisk-noautostop"])
    assert "stage autostop" in off and "--default-window off" in off
    # Jupyter on loopback only, token never on a command line
    assert "--ServerApp.ip=127.0.0.1" in gpu and "token" not in gpu.split("ExecStart=")[1].split("\n")[0].lower()


def test_unsafe_user_name_is_refused():
    with pytest.raises(InvalidInput):
        render_startup_script(StartupOptions(user="x; rm -rf /"))


class _Metadata(http.server.BaseHTTPRequestHandler):
    calls: list = []

    def do_PUT(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
        self.calls.append((self.path, self.headers.get("Metadata-Flavor"), body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def metadata():
    _Metadata.calls = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metadata)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, _Metadata.calls
    server.shutdown()
    server.server_close()


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "startup.sh"
    path.write_text(render_startup_script(StartupOptions(gpu=True, data_disk=True)))
    return path


def bash(script: Path, code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, GCPDL_STARTUP_SOURCE_ONLY="1", GCPDL_SLEEP="true", **env)
    return subprocess.run(["bash", "-c", f'source "{script}"\n{code}'], capture_output=True, text=True, env=full_env, timeout=30, cwd=tmp_path)


def _stub(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    p = bin_dir / name
    p.write_text("#!/bin/bash\n" + body)
    p.chmod(0o755)


def test_stage_reports_to_guest_attributes(script, tmp_path, metadata):
    server, calls = metadata
    r = bash(script, "stage driver", tmp_path, GCPDL_METADATA_URL=f"http://127.0.0.1:{server.server_port}")
    assert r.returncode == 0, r.stderr
    assert calls == [("/instance/guest-attributes/gcpdl/stage", "Google", "driver")]


def test_driver_wait_succeeds_once_nvidia_smi_answers(script, tmp_path, metadata):
    server, calls = metadata
    bin_dir = tmp_path / "bin"
    # fails twice (driver still installing), then lists a GPU
    _stub(bin_dir, "nvidia-smi", f'n=$(cat {tmp_path}/n 2>/dev/null || echo 0); echo $((n+1)) > {tmp_path}/n\n[ "$n" -ge 2 ] && echo "GPU 0: Tesla T4 (UUID: GPU-x)" && exit 0\necho "NVIDIA-SMI has failed"; exit 9\n')
    r = bash(script, "wait_for_driver 60", tmp_path, PATH=f"{bin_dir}:{os.environ['PATH']}", GCPDL_METADATA_URL=f"http://127.0.0.1:{server.server_port}")
    assert r.returncode == 0, r.stderr
    assert "gcpdl: GPU: GPU 0: Tesla T4" in r.stdout
    assert calls == []


def test_driver_wait_gives_up_and_reports_why(script, tmp_path, metadata):
    server, calls = metadata
    bin_dir = tmp_path / "bin"
    _stub(bin_dir, "nvidia-smi", 'echo "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver."; exit 9\n')
    r = bash(script, "wait_for_driver 10; echo unreachable", tmp_path, PATH=f"{bin_dir}:{os.environ['PATH']}", GCPDL_METADATA_URL=f"http://127.0.0.1:{server.server_port}")
    assert r.returncode == 1 and "unreachable" not in r.stdout
    error = "NVIDIA driver not ready after 10s: NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver."
    assert calls == [
        ("/instance/guest-attributes/gcpdl/error", "Google", error),
        ("/instance/guest-attributes/gcpdl/stage", "Google", "failed"),
    ]


def test_err_trap_reports_the_failing_step(script, tmp_path, metadata):
    server, calls = metadata
    r = bash(script, "trap 'on_error \"$LINENO\" \"$?\"' ERR\nstage disk\nfalse\necho unreachable", tmp_path, GCPDL_METADATA_URL=f"http://127.0.0.1:{server.server_port}")
    assert r.returncode == 1 and "unreachable" not in r.stdout
    assert calls[0] == ("/instance/guest-attributes/gcpdl/stage", "Google", "disk")
    assert calls[1][0].endswith("/gcpdl/error") and calls[1][2].startswith("step 'disk' failed at line ")


def test_fstab_entry_added_once(script, tmp_path):
    fstab = tmp_path / "fstab"
    fstab.write_text("UUID=aaaa / ext4 defaults 0 1\n")
    for _ in range(2):  # second boot: nothing new
        r = bash(script, "ensure_fstab 1234-abcd /data", tmp_path, GCPDL_FSTAB=str(fstab))
        assert r.returncode == 0, r.stderr
    assert fstab.read_text() == "UUID=aaaa / ext4 defaults 0 1\nUUID=1234-abcd /data ext4 discard,defaults,nofail 0 2\n"


def test_token_created_once_private(script, tmp_path):
    env_file = tmp_path / "cfg" / "jupyter.env"
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    r = bash(script, f'ensure_token "{env_file}" {user}', tmp_path)
    assert r.returncode == 0, r.stderr
    first = env_file.read_text()
    assert first.startswith("JUPYTER_TOKEN=") and len(first.strip()) == len("JUPYTER_TOKEN=") + 48
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    bash(script, f'ensure_token "{env_file}" {user}', tmp_path)
    assert env_file.read_text() == first  # a reboot keeps the token (bookmarked URLs keep working)
