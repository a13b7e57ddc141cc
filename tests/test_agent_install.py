"""The startup fragment installs the agent, and the installed agent runs on a bare system python3
(stdlib only) against the real jupyter server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gcpdl.agent import agent_sources
from gcpdl.render import render
from gcpdl.startup import StartupOptions, render_startup_script

SYSTEM_PYTHON = "/usr/bin/python3"


def fragment(options: StartupOptions) -> str:
    # the helpers the startup script provides to the fragment (log, stage, fail, guest_attr)
    return "#!/bin/bash\nset -euo pipefail\nlog() { echo \"gcpdl: $*\"; }\n" + render("autostop.sh.j2", o=options)


@pytest.fixture
def installed(tmp_path: Path):
    calls = tmp_path / "systemctl.log"
    fake = tmp_path / "systemctl"
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    fake.chmod(0o755)
    script = tmp_path / "install.sh"
    script.write_text(fragment(StartupOptions(autostop_minutes=45, gpu=False)))
    env = dict(os.environ, GCPDL_AGENT_DIR=str(tmp_path / "opt" / "gcpdl-agent"), GCPDL_UNIT_DIR=str(tmp_path / "units"),
               GCPDL_TMPFILES_DIR=str(tmp_path / "tmpfiles.d"), GCPDL_SYSTEMCTL=str(fake))

    def run() -> list[str]:
        subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True, text=True)
        return calls.read_text().splitlines()

    return tmp_path, run


def test_fragment_writes_the_agent_the_unit_and_the_run_dir(installed):
    tmp_path, run = installed
    assert run() == ["daemon-reload", "enable gcpdl-autostop.service", "restart gcpdl-autostop.service"]
    agent_dir = tmp_path / "opt" / "gcpdl-agent"
    for rel, text in agent_sources().items():
        assert (agent_dir / rel).read_text() == text
    unit = (tmp_path / "units" / "gcpdl-autostop.service").read_text()
    assert "ExecStart=/usr/bin/python3 -s -m gcpdl.agent --no-gpu --jupyter-url http://127.0.0.1:8888/ --default-window 45\n" in unit
    assert "EnvironmentFile=-/home/gcpdl/.config/gcpdl/jupyter.env" in unit
    assert "TOKEN=" not in unit
    assert (tmp_path / "tmpfiles.d" / "gcpdl.conf").read_text() == "d /run/gcpdl 1777 root root -\n"
    # a second boot changes nothing and does not restart the agent
    assert run()[3:] == ["enable --now gcpdl-autostop.service"]


def test_unit_for_a_gpu_vm_with_autostop_off_still_runs_the_agent():
    unit = render("gcpdl-autostop.service.j2", o=StartupOptions(autostop_minutes=None, gpu=True))
    assert "-m gcpdl.agent --gpu --jupyter-url http://127.0.0.1:8888/ --default-window off\n" in unit


def test_startup_script_includes_the_fragment_when_autostop_is_on():
    on = render_startup_script(StartupOptions(autostop_minutes=60))
    assert "install_autostop_agent\n" in on
    assert "cat >\"$new/gcpdl/agent/policy.py\" <<'GCPDL_AGENT_SOURCE'" in on


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_fragment_passes_shellcheck(tmp_path):
    script = tmp_path / "f.sh"
    script.write_text(fragment(StartupOptions()))
    out = subprocess.run(["shellcheck", "-s", "bash", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="no system python3")
def test_installed_agent_runs_on_a_bare_system_python(installed, jupyter_server, tmp_path):
    _, run = installed
    run()
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "opt" / "gcpdl-agent"), "JUPYTER_TOKEN": jupyter_server.token}
    out = subprocess.run(
        [SYSTEM_PYTHON, "-s", "-m", "gcpdl.agent", "--once", "--no-gpu", "--jupyter-url", jupyter_server.url,
         "--sync-lock", str(tmp_path / "no.lock")],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    readings = json.loads(out.stdout)["readings"]
    assert readings[0].startswith(("jupyter=idle", "jupyter=busy")), readings  # the token from the env worked
    assert readings[1] == "gpu=idle (no GPU)"
    assert jupyter_server.token not in out.stdout + out.stderr


def test_probe_gpu_prints_what_each_reader_says():
    out = subprocess.run([sys.executable, "-m", "gcpdl.agent", "--probe-gpu"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert set(report) == {"nvml", "nvidia_smi", "gpu_signal"}
    if shutil.which("nvidia-smi") is None:  # this machine: no GPU, so the signal must be unknown
        assert report["nvidia_smi"] is None
        assert report["gpu_signal"].startswith("gpu=unknown")
