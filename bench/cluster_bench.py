"""`gcpdl sync gs://B/P --on CLUSTER` on a 4-node cluster against 4 x the same sync on one node.

    sudo .venv/bin/python bench/cluster_bench.py [--nodes 4] [--files 2000] [--size 65536] [--latency 0.02] [--runs 1]

Set-up (issue 12): the GCS stand-in (tests/fakes/gcs_server.py) in its own process with 20 ms of
injected latency per request; N real sshd "nodes" on 127.0.0.2.. started the way the test
fixture starts them (tests/fixtures/cluster.py start_nodes, so it needs root); the fake Compute
server holding the cluster's instances (seed_cluster). Every command is its own `gcpdl` process,
as a user runs it. Each node fills a fresh folder of its own.

- single: `gcpdl sync gs://B/P DEST --on c-0` (one VM), N times in a row (each into a new DEST);
- cluster: `gcpdl sync gs://B/P DEST --on c` (every node at once, one progress line).

The ratio (N x single) / cluster is the speed-up; N is the ideal (independent VMs each reading
GCS). On one machine the nodes share its cores and the one stand-in process, so the load and the
core count are printed with the figures. gcpdl's wheel is shipped to every node by an untimed
warm-up sync first (it is shipped once per node and version). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli_bench import timed  # noqa: E402  (bench/ is this script's own folder on sys.path)

GCPDL = [sys.executable, "-m", "gcpdl"]
BUCKET = "cbench"


def tree_files(dest: Path) -> int:
    return sum(len(names) for root, _, names in os.walk(dest) if ".gcpdl" not in Path(root).relative_to(dest).parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--files", type=int, default=2000, help="objects in the dataset")
    ap.add_argument("--size", type=int, default=64 << 10, help="bytes per object")
    ap.add_argument("--latency", type=float, default=0.02, help="seconds the stand-in adds to every request")
    ap.add_argument("--runs", type=int, default=1, help="repeat both sides, report medians")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("cluster_bench runs sshd as root (it logs in as the current user): run it with sudo")

    from tests.fakes.compute_server import FakeCompute
    from tests.fakes.gcs_admin import start_standin, stop_standin
    from tests.fixtures.cluster import ZONE, seed_cluster, start_nodes
    from tests.fixtures.ssh import SshdFactory

    load0 = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="gcpdl-cluster-bench-"))
    home = work / "home"
    for d in (home, work / "sshd", work / "nodes"):
        d.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GCPDL_", "CLOUDSDK_", "GOOGLE_", "GCE_", "STORAGE_EMULATOR"))}
    env.update(HOME=str(home), GCPDL_CONFIG_DIR=str(home / "cfg"), CLOUDSDK_CONFIG=str(home / "gcloud"),
               NO_GCE_CHECK="True", GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9",
               GCPDL_POLL_INTERVAL="0.02", GCPDL_ZONE=ZONE, GCPDL_REMOTE_PYTHON=sys.executable, PYTHONPATH=str(ROOT))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as an installed gcpdl: bytecode compiled once
    os.environ.update(env)  # ensure_keypair below writes gcpdl's key where the commands look for it

    fake = server = factory = None
    try:
        from gcpdl.ssh.keys import ensure_keypair

        fake = FakeCompute(key_dir=work / "key").start()
        server = start_standin(latency=args.latency, log_path=work / "gcs.log")
        factory = SshdFactory(work / "sshd", {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"})

        nodes = start_nodes(factory, work / "nodes", args.nodes)
        nodes[0].authorize(ensure_keypair().public_line)  # one authorized_keys file for all of them
        seed_cluster(fake, nodes)
        env.update(GCPDL_COMPUTE_ENDPOINT=fake.url, GOOGLE_APPLICATION_CREDENTIALS=str(fake.key_file), GCPDL_PROJECT=fake.project,
                   STORAGE_EMULATOR_HOST=server.url, GCPDL_SSH_PORT=str(nodes[0].port), GCPDL_SSH_USER=nodes[0].user,
                   GCPDL_SSH_WAIT="30")
        server.create_bucket(BUCKET, public=True)
        server.generate(BUCKET, "d/", args.files, args.size, seed=1)
        server.warm(BUCKET, "d/")
        src = f"gs://{BUCKET}/d"
        n = args.nodes
        timed(GCPDL + ["sync", src, "warm", "--on", "c", "--json"], env)  # ships the wheel to every node
        singles, clusters = [], []
        for r in range(args.runs):
            one = 0.0
            for i in range(n):
                one += timed(GCPDL + ["sync", src, f"single-{r}-{i}", "--on", "c-0", "--json"], env)
                assert tree_files(nodes[0].home / f"single-{r}-{i}") == args.files
            singles.append(one)
            clusters.append(timed(GCPDL + ["sync", src, f"cluster-{r}", "--on", "c", "--json"], env))
            for node in nodes:
                assert tree_files(node.home / f"cluster-{r}") == args.files, f"{node.home} is missing files"
        single, cluster = statistics.median(singles), statistics.median(clusters)
        ratio = single / cluster
        load1 = os.getloadavg()
        mb = args.files * args.size / 1e6
        print(f"sync --on: {args.files} x {args.size >> 10} KB ({mb:.0f} MB) per node, {args.latency * 1000:.0f} ms per request, "
              f"{os.cpu_count()} cores, load {'/'.join(f'{x:.2f}' for x in load0)} -> {'/'.join(f'{x:.2f}' for x in load1)}, "
              f"median of {args.runs}")
        print(f"  {n} x single node (c-0, {n} syncs in a row)  {single:7.2f} s  ({single / n:.2f} s each)")
        print(f"  {n}-node cluster (sync --on c)           {cluster:7.2f} s")
        print(f"  speed-up {ratio:.2f}x of an ideal {n}x ({ratio / n:.0%} of it)")
    finally:
        if factory is not None:
            factory.stop_all()
        if server is not None:
            stop_standin(server)
        if fake is not None:
            fake.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
