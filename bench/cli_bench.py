"""CLI latency: `gcpdl --help`, `gcpdl status` (3 VMs) and `gcpdl up` against the fake Compute.

    .venv/bin/python bench/cli_bench.py [--runs 5] [--latency 0.2] [--polls 3]

Each command runs as its own process, the way a user runs it, against tests/fakes/compute_server
on 127.0.0.1 (started in this process). Prints one table and writes nothing else.

`up` is measured against a simulated critical path: the fake sleeps ``--latency`` seconds on every
Compute request and finishes an operation after ``--polls`` waits, so the fastest possible create
is (pre-flight reads in parallel) + the SSH deny rule's insert + polls x wait (it must exist before
the VM does) + the instance's insert + polls x wait + final get = (4 + 2 x polls) x latency.
The overhead column is what gcpdl adds on top: Python start-up, imports, JSON, threads.
Peers for --help were measured on this machine by the lead (SkyPilot `sky --help` 3.5 s,
dstack `dstack --help` 2.3 s); they are quoted, not re-run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GCPDL = [sys.executable, "-m", "gcpdl"]
PEERS_HELP = {"SkyPilot sky --help": 3.5, "dstack --help": 2.3}


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    took = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--latency", type=float, default=0.2, help="seconds the fake adds to every Compute request")
    ap.add_argument("--polls", type=int, default=3, help="waits before an operation is DONE")
    args = ap.parse_args()

    from tests.fakes.compute_server import FakeCompute

    work = Path(tempfile.mkdtemp(prefix="gcpdl-cli-bench-"))
    fake = FakeCompute(key_dir=work / "key").start()
    home = work / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GCPDL_", "CLOUDSDK_", "GOOGLE_", "GCE_"))}
    env.update(
        HOME=str(home), GCPDL_CONFIG_DIR=str(home / "cfg"), CLOUDSDK_CONFIG=str(home / "gcloud"),
        GCPDL_COMPUTE_ENDPOINT=fake.url, GOOGLE_APPLICATION_CREDENTIALS=str(fake.key_file),
        GCPDL_PROJECT=fake.project, GCPDL_ZONE="us-central1-a", GCPDL_MY_IP="203.0.113.7",
        GCPDL_POLL_INTERVAL="0.02", NO_GCE_CHECK="True", GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9",
    )
    rows: list[tuple[str, str, str, str]] = []

    # --- imports (context for the choices below) ------------------------------------------
    full = statistics.median(timed([sys.executable, "-c", "import google.cloud.compute_v1"], env) for _ in range(3))
    lean = statistics.median(
        timed([sys.executable, "-c", "from gcpdl.clients import compute_class, compute_types; compute_types();"
               "[compute_class(n) for n in ('InstancesClient','ZoneOperationsClient','GlobalOperationsClient','FirewallsClient','DisksClient')]"], env)
        for _ in range(3)
    )
    sess = statistics.median(timed([sys.executable, "-c", "import google.auth.transport.requests"], env) for _ in range(3))
    rows.append(("import google.cloud.compute_v1 (whole package)", f"{full:.2f} s", "", "what a plain import costs"))
    rows.append(("import 5 compute_v1 services (clients.compute_class)", f"{lean:.2f} s", f"{full / lean:.1f}x faster", "what up/stop/start/down load"))
    rows.append(("import google-auth AuthorizedSession", f"{sess:.2f} s", f"{full / sess:.1f}x faster", "what status loads"))

    # --- gcpdl --help --------------------------------------------------------------------------
    timed(GCPDL + ["--help"], env)  # warm the page cache
    helps = [timed(GCPDL + ["--help"], env) for _ in range(args.runs)]
    h = statistics.median(helps)
    peers = ", ".join(f"{v / h:.0f}x faster than {k} ({v} s)" for k, v in PEERS_HELP.items())
    rows.append(("gcpdl --help", f"{h:.3f} s", "target <= 0.25 s", peers))

    # --- gcpdl status, three VMs -----------------------------------------------------------
    fake.reset()
    fake.add_instance("alpha", zone="us-central1-a", labels={"gcpdl": "managed"})
    fake.add_instance("beta", zone="europe-west4-a", labels={"gcpdl": "managed"}, machine_type="g2-standard-8")
    fake.add_instance("gamma", zone="us-east1-c", labels={"gcpdl": "managed"}, status="TERMINATED", spot=True)
    timed(GCPDL + ["status"], env)
    sts = [timed(GCPDL + ["status"], env) for _ in range(args.runs)]
    fake.requests.clear()
    timed(GCPDL + ["status"], env)
    n_status = len([r for r in fake.requests if r.method_id])
    rows.append(("gcpdl status (3 VMs, 1 stopped)", f"{statistics.median(sts):.3f} s", "target <= 1 s",
                 f"{n_status} API calls, no latency injected; best {min(sts):.3f} s"))
    fake.latency = args.latency
    sts_l = [timed(GCPDL + ["status"], env) for _ in range(max(2, args.runs // 2))]
    rows.append((f"gcpdl status, {args.latency * 1000:.0f} ms per call", f"{statistics.median(sts_l):.3f} s", "",
                 f"critical path 2 x {args.latency:.2f} s (list, then the stopped VMs' reads in parallel)"))

    # --- gcpdl up against the simulated critical path ---------------------------------------
    walls, calls = [], []
    for i in range(args.runs):
        fake.reset()
        fake.latency = args.latency
        fake.operation_polls = args.polls
        walls.append(timed(GCPDL + ["up", f"bench{i}", "--gpu", "t4", "--yes", "--no-wait"], env))
        calls.append(len([r for r in fake.requests if r.method_id]))
    critical = (4 + 2 * args.polls) * args.latency
    wall = statistics.median(walls)
    rows.append((f"gcpdl up --gpu t4 ({args.latency * 1000:.0f} ms/call, {args.polls} polls/op)", f"{wall:.2f} s",
                 f"+{wall - critical:.2f} s over critical path {critical:.2f} s (target <= +1 s)",
                 f"{statistics.median(calls):.0f} API calls on the happy path; best run +{min(walls) - critical:.2f} s"))
    # --- gcpdl up --nodes 4: the same critical path, inserts in parallel (issue 12) -------------
    nwalls, ncalls = [], []
    for i in range(args.runs):
        fake.reset()
        fake.latency = args.latency
        fake.operation_polls = args.polls
        nwalls.append(timed(GCPDL + ["up", f"nodes{i}", "--nodes", "4", "--gpu", "l4", "--yes", "--no-wait"], env))
        ncalls.append(len([r for r in fake.requests if r.method_id]))
    nwall = statistics.median(nwalls)
    rows.append((f"gcpdl up --nodes 4 --gpu l4 ({args.latency * 1000:.0f} ms/call, {args.polls} polls/op)", f"{nwall:.2f} s",
                 f"{nwall - wall:+.2f} s over one VM's up (target <= +1 s)",
                 f"{statistics.median(ncalls):.0f} API calls: 4 inserts, rules and placement policy in parallel"))
    fake.reset()
    fake.latency = 0
    fake.operation_polls = 1
    t0 = [timed(GCPDL + ["up", f"zero{i}", "--gpu", "t4", "--yes", "--no-wait"], env) for i in range(2)]
    rows.append(("gcpdl up --gpu t4 (no latency)", f"{statistics.median(t0):.2f} s", "", "pure client-side cost"))
    fake.stop()

    width = [max(len(r[i]) for r in rows + [("what", "median", "vs", "notes")]) for i in range(4)]
    line = "  ".join
    print(f"gcpdl CLI bench: {args.runs} runs, median; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
          " (machine shared with other engineers: expect noise)")
    print(line(h.ljust(w) for h, w in zip(("what", "median", "vs", "notes"), width)))
    for r in rows:
        print(line(c.ljust(w) for c, w in zip(r, width)).rstrip())


if __name__ == "__main__":
    main()
