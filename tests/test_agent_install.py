"""The startup fragment installs the agent, and the installed agent runs on a bare system python3
(stdlib only) against the real jupyter server."""

from __future__ import annotations

import json
import os
import shlex
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
    assert " --no-gpu --jupyter-url http://127.0.0.1:8888/ --default-window 45\n" in unit
    assert "EnvironmentFile=-/etc/gcpdl/jupyter.env" in unit
    assert "TOKEN=" not in unit
    assert (tmp_path / "tmpfiles.d" / "gcpdl.conf").read_text() == "d /run/gcpdl 1777 root root -\n"
    # a second boot changes nothing and does not restart the agent
    assert run()[3:] == ["enable --now gcpdl-autostop.service"]


def test_unit_for_a_gpu_vm_with_autostop_off_still_runs_the_agent():
    unit = render("gcpdl-autostop.service.j2", o=StartupOptions(autostop_minutes=None, gpu=True))
    assert " --gpu --jupyter-url http://127.0.0.1:8888/ --default-window off\n" in unit


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


def unit_command(unit: str, agent_dir: Path) -> list[str]:
    """The unit's ExecStart as argv, as systemd splits it, with the agent where the test put it."""
    line = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    return [a.replace("/opt/gcpdl-agent", str(agent_dir)) for a in shlex.split(line[len("ExecStart="):])]


def unit_environment(unit: str, env_files: dict[str, str]) -> dict[str, str]:
    """Environment= lines, then each EnvironmentFile= (systemd reads these later: they win)."""
    env: dict[str, str] = {}
    for ln in unit.splitlines():
        if ln.startswith("Environment="):
            key, _, value = ln[len("Environment="):].partition("=")
            env[key] = value
    for ln in unit.splitlines():
        if ln.startswith("EnvironmentFile="):
            for entry in env_files.get(ln[len("EnvironmentFile="):].lstrip("-"), "").splitlines():
                key, _, value = entry.partition("=")
                env[key] = value
    return env


@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="no system python3")
def test_installed_agent_runs_on_a_bare_system_python(installed, jupyter_server, tmp_path):
    _, run = installed
    run()
    unit = (tmp_path / "units" / "gcpdl-autostop.service").read_text()
    argv = unit_command(unit, tmp_path / "opt" / "gcpdl-agent")
    argv = [jupyter_server.url if a == "http://127.0.0.1:8888/" else a for a in argv]
    env = {"PATH": "/usr/bin:/bin", **unit_environment(unit, {"/etc/gcpdl/jupyter.env": f"JUPYTER_TOKEN={jupyter_server.token}\n"})}
    out = subprocess.run(argv + ["--once", "--sync-lock", str(tmp_path / "no.lock")], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    readings = json.loads(out.stdout)["readings"]
    assert readings[0].startswith(("jupyter=idle", "jupyter=busy")), readings  # the token from the env worked
    assert readings[1] == "gpu=idle (no GPU)"
    assert jupyter_server.token not in out.stdout + out.stderr


@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="no system python3")
def test_the_root_agent_reads_only_root_owned_configuration(installed, tmp_path):
    """Issue 9, item 7: the agent runs as root, so no file the login user can write may reach
    its environment, and no environment may make its python import other code."""
    _, run = installed
    run()
    unit = (tmp_path / "units" / "gcpdl-autostop.service").read_text()
    env_files = [ln.split("=", 1)[1].lstrip("-") for ln in unit.splitlines() if ln.startswith("EnvironmentFile=")]
    assert env_files and all(f.startswith("/etc/gcpdl/") for f in env_files), env_files
    # the login user's code, where a PYTHONPATH (or any PYTHON* variable) would make root load it
    evil = tmp_path / "home" / "gcpdl" / "evil"
    marker = tmp_path / "root-ran-user-code"
    payload = f"open({str(marker)!r}, 'w').write('pwned')\n"
    (evil / "gcpdl" / "agent").mkdir(parents=True)
    for rel in ("sitecustomize.py", "usercustomize.py", "gcpdl/__init__.py", "gcpdl/agent/__init__.py", "gcpdl/agent/main.py", "startup.py"):
        (evil / rel).write_text(payload)
    hostile = {"PYTHONPATH": str(evil), "PYTHONSTARTUP": str(evil / "startup.py"), "PYTHONHOME": str(evil),
               "PYTHONINSPECT": "1", "PYTHONUSERBASE": str(evil)}
    # what a user could write into every file the unit reads, plus the same in the environment
    env = {"PATH": "/usr/bin:/bin", **hostile,
           **unit_environment(unit, {f: "".join(f"{k}={v}\n" for k, v in hostile.items()) for f in env_files})}
    argv = unit_command(unit, tmp_path / "opt" / "gcpdl-agent")
    out = subprocess.run(argv + ["--once", "--sync-lock", str(tmp_path / "no.lock")], env=env, capture_output=True,
                         text=True, timeout=60, cwd=evil, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert not marker.exists()
    assert json.loads(out.stdout)["readings"][1] == "gpu=idle (no GPU)"  # the real agent ran


def test_probe_gpu_prints_what_each_reader_says():
    out = subprocess.run([sys.executable, "-m", "gcpdl.agent", "--probe-gpu"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert set(report) == {"nvml", "nvidia_smi", "gpu_signal"}
    if shutil.which("nvidia-smi") is None:  # this machine: no GPU, so the signal must be unknown
        assert report["nvidia_smi"] is None
        assert report["gpu_signal"].startswith("gpu=unknown")
