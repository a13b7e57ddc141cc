"""Autostop: how long (simulated minutes) the agent takes to stop the VM in each idle and busy
scenario, and what one look at every signal costs on this machine.

    .venv/bin/python bench/autostop_scenarios.py

The scenarios are the tests in tests/test_agent.py (real `jupyter server`, injected clock and
stop command); this runs them and prints their table. Then it times the agent's tick against a
real Jupyter server: the agent runs once a minute on the VM, so this is its whole CPU cost.
"""

from __future__ import annotations

import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def scenario_table() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/test_agent.py", "-q", "-s", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True,
    )
    text = out.stdout
    start = text.find("Autostop scenarios")
    if start < 0:
        print(text[-3000:])
    else:
        rows = text[start:].splitlines()
        print("\n".join(r for r in rows[: next((i for i, r in enumerate(rows) if not r.strip() or r.strip() == "."), len(rows))]))
    if out.returncode != 0:
        print(f"(tests failed: exit {out.returncode})")


def tick_cost(n: int = 50) -> None:
    from gcpdl.agent import signals as sig
    from tests.fixtures.ports import free_port, wait_for_port

    base = Path(tempfile.mkdtemp(prefix="gcpdl-bench-"))
    (base / "root").mkdir()
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(base / "rt"), JUPYTER_CONFIG_DIR=str(base / "cfg"), HOME=str(base))
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root", f"--ServerApp.port={port}",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.root_dir={base / 'root'}", f"--IdentityProvider.token={token}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=60, proc=proc)
        endpoint = sig.JupyterEndpoint(f"http://127.0.0.1:{port}/", token)
        signals = {
            "jupyter (2 REST calls)": sig.JupyterSignal(lambda: endpoint),
            "ssh (/proc scan)": sig.SshSignal(),
            "sync (lock + /proc scan)": sig.SyncSignal(str(base / "none.lock")),
            "gpu (nvidia-smi/NVML)": sig.GpuSignal(expected=False),
        }
        print(f"\nOne look at each signal, {n} looks, this machine ({os.cpu_count()} cores, {len(sig.proc_table())} processes)")
        print(f"{'signal':<26} {'median ms':>10} {'p95 ms':>8}")
        total = 0.0
        for name, s in signals.items():
            s.read()
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                s.read()
                times.append((time.perf_counter() - t0) * 1000)
            times.sort()
            med = statistics.median(times)
            total += med
            print(f"{name:<26} {med:>10.2f} {times[int(0.95 * (n - 1))]:>8.2f}")
        print(f"{'whole tick':<26} {total:>10.2f}   -> {total / 60_000 * 100:.4f}% of one core at one tick a minute")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    scenario_table()
    tick_cost()
