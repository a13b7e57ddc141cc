"""Ray on a cluster: Ray's own CLI starts the head on node 0 and joins the workers (over SSH),
and jobs go in through Ray's job REST API over an SSH tunnel to node 0 (no Ray needed here).

- RAY_VERSION is the one place the version is pinned: a node whose image lacks Ray gets exactly it.
- The dashboard (and with it the job API, which runs any code it is given) listens on node 0's
  127.0.0.1 only: it is reached through the SSH tunnel, like Jupyter. The nodes reach the head's
  GCS port through the cluster's own firewall rule.
- Node 0 keeps what was started in ``.gcpdl/ray.json`` (in the login user's home), so `gcpdl ray`
  and `gcpdl jupyter` know the ports, and can say plainly when Ray is not running.
Nothing here prints; progress goes through callbacks.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from gcpdl.errors import GcpdlError, InvalidInput

RAY_VERSION = "2.40.0"
STATE_FILE = ".gcpdl/ray.json"  # on node 0, relative to the login user's home
START_TIMEOUT = 300.0  # `ray start` on a loaded node; the first install takes longer
INSTALL_TIMEOUT = 900.0
MAX_WORKING_DIR = 100 * 1024 * 1024  # Ray's own limit for a working_dir package (100 MiB)
JOB_POLL = 1.0


class RayNotRunning(GcpdlError):
    pass


@dataclass(frozen=True)
class RayPorts:
    gcs: int = 6379  # the head's GCS; workers join it
    dashboard: int = 8265  # dashboard + job API, on the head's 127.0.0.1
    agent: int = 52365  # each node's dashboard agent: this + the node's rank, so nodes sharing a host never collide
    temp_dir: str | None = None  # the cluster's session folder (Ray's default /tmp/ray when None)


def install_command(python: str = "python3") -> str:
    """Install the pinned Ray on a node that does not have it (once); nothing when it does."""
    pin = shlex.quote(f"ray[default]=={RAY_VERSION}")
    return (f"{python} -c 'import ray' 2>/dev/null || "
            f"{{ echo 'Installing Ray {RAY_VERSION} (once)...' >&2; {python} -m pip install -q --disable-pip-version-check {pin} >&2; }}")


def head_command(ip: str, ports: RayPorts, num_cpus: int | None, num_gpus: int, python: str = "python3") -> str:
    args = [f"{python} -m ray.scripts.scripts", "start", "--head", f"--node-ip-address={ip}", f"--port={ports.gcs}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={ports.dashboard}", f"--dashboard-agent-listen-port={ports.agent}",
            "--disable-usage-stats", f"--num-gpus={num_gpus}"]
    if num_cpus is not None:
        args.append(f"--num-cpus={num_cpus}")
    if ports.temp_dir:
        args.append(f"--temp-dir={shlex.quote(ports.temp_dir)}")
    state = json.dumps({"version": RAY_VERSION, "head": ip, **asdict(ports)})
    # the state file goes in only once the head runs; with it, the folder of the Python that runs
    # Ray, so a job's `python` is that one (not another Python earlier on the login PATH)
    write = ("import json, os, sys; d = json.loads(sys.argv[1]); d['python_bin'] = os.path.dirname(sys.executable); "
             f"os.makedirs('.gcpdl', exist_ok=True); open({STATE_FILE!r}, 'w').write(json.dumps(d))")
    return f"{' '.join(args)} && {python} -c {shlex.quote(write)} {shlex.quote(state)}"


def worker_command(ip: str, head_ip: str, ports: RayPorts, rank: int, num_cpus: int | None, num_gpus: int,
                   python: str = "python3") -> str:
    args = [f"{python} -m ray.scripts.scripts", "start", f"--address={head_ip}:{ports.gcs}", f"--node-ip-address={ip}",
            f"--dashboard-agent-listen-port={ports.agent + rank}", "--disable-usage-stats", f"--num-gpus={num_gpus}"]
    if num_cpus is not None:
        args.append(f"--num-cpus={num_cpus}")
    return " ".join(args)


def start(cluster: Any, sessions: list[Any], ports: RayPorts = RayPorts(), num_cpus: int | None = None,
          progress: Callable[[str], None] = lambda _m: None, python: str = "python3", install: bool = True) -> dict[str, Any]:
    """Ray on every node: installed where missing (in parallel), the head on node 0, then every
    worker joining it (in parallel). Returns the head's state (what ray.json holds)."""
    from gcpdl.compute.cluster import _each

    head, nodes = cluster.head, cluster.nodes
    gpus = max(0, head.gpu_count)

    def run(session: Any, command: str, timeout: float, what: str) -> None:
        r = session.run(f"bash -c {shlex.quote(command)}", timeout=timeout)
        if r.exit_code != 0:
            detail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            raise GcpdlError(f"{what} failed on {session.target.name} (exit {r.exit_code}): {' / '.join(detail)[:300]}",
                             fix=f"See the node with: gcpdl ssh {session.target.name}")

    # `up --ray` again on a cluster whose Ray runs: leave it be (a second `ray start --head` fails)
    probe = (f"{python} -c " + shlex.quote(f"import json, socket; d = json.load(open({STATE_FILE!r})); "
                                            "socket.create_connection((d['head'], d['gcs']), 3)"))
    if sessions[0].run(f"bash -c {shlex.quote(probe)}", timeout=30).exit_code == 0:
        found = state(sessions[0])
        progress(f"Ray already runs on {cluster.name} (head {head.name}); leaving it as it is.")
        return found
    if install:
        _each(list(zip(nodes, sessions)), lambda p: run(p[1], install_command(python), INSTALL_TIMEOUT, "Installing Ray"))
    progress(f"Starting the Ray head on {head.name} ({head.internal_ip})...")
    run(sessions[0], head_command(head.internal_ip, ports, num_cpus, gpus, python), START_TIMEOUT, "Starting the Ray head")
    workers = list(zip(nodes[1:], sessions[1:]))
    if workers:
        progress(f"Joining {len(workers)} worker node(s) to it...")
        from gcpdl.compute.cluster import rank_of

        _each(workers, lambda p: run(p[1], worker_command(p[0].internal_ip, head.internal_ip, ports, rank_of(p[0]), num_cpus,
                                                            gpus, python), START_TIMEOUT, "Joining Ray"))
    return {"version": RAY_VERSION, "head": head.internal_ip, **asdict(ports)}


def state(session: Any) -> dict[str, Any]:
    """What node 0's ray.json says (RayNotRunning when there is none)."""
    r = session.run(f"cat {STATE_FILE}", timeout=30)
    try:
        data = json.loads(r.stdout) if r.exit_code == 0 else None
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("dashboard"), int):
        name = session.target.name.rsplit("-", 1)[0]
        raise RayNotRunning(f"Ray is not running on cluster {name}.", fix=f"Start it with: gcpdl up {name} --nodes N --ray")
    return data


# --- the job API (https://docs.ray.io/en/latest/cluster/running-applications/job-submission/rest.html) ---
def package_dir(root: Path) -> tuple[str, bytes]:
    """The working directory as Ray's job API wants it: a zip named after its content hash."""
    buf = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for dirpath, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in (".git", "__pycache__", ".venv", "node_modules"))
            for f in sorted(files):
                p = Path(dirpath, f)
                if p.is_symlink() or not p.is_file():
                    continue
                total += p.stat().st_size
                if total > MAX_WORKING_DIR:
                    raise InvalidInput(f"The working directory {root} holds more than {MAX_WORKING_DIR >> 20} MiB, Ray's limit "
                                       "for a job's files.", fix="Run `gcpdl ray` from a folder with only your code (data goes by gcpdl sync).")
                z.write(p, str(p.relative_to(root)))
    data = buf.getvalue()
    return f"_ray_pkg_{hashlib.sha1(data).hexdigest()[:16]}.zip", data


@dataclass
class JobApi:
    """Ray's job REST API at ``base`` (the tunnel's local end)."""

    base: str
    timeout: float = 30.0
    submit_wait: float = 120.0  # seconds a refused submit (5xx: the head's job agent not up yet) is retried
    retry_pause: float = 1.0  # seconds between those tries (doubling, at most 10)

    def _call(self, method: str, path: str, body: bytes | None = None, ctype: str = "application/json") -> tuple[int, bytes]:
        import urllib.error
        import urllib.request

        req = urllib.request.Request(self.base + path, data=body, method=method, headers={"Content-Type": ctype})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:  # noqa: S310 - our tunnel on 127.0.0.1
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError as e:
            raise GcpdlError(f"Ray's job API did not answer through the tunnel ({type(e).__name__}: {e}).") from None

    def upload(self, name: str, data: bytes) -> str:
        uri = f"gcs://{name}"
        status, _ = self._call("GET", f"/api/packages/gcs/{name}")
        if status != 200:
            status, body = self._call("PUT", f"/api/packages/gcs/{name}", data, "application/octet-stream")
            if status != 200:
                raise GcpdlError(f"Ray refused the job's files (HTTP {status}): {body[:200].decode(errors='replace')}")
        return uri

    def submit(self, entrypoint: str, working_dir_uri: str | None, python_bin: str | None = None) -> str:
        body: dict[str, Any] = {"entrypoint": entrypoint}
        env: dict[str, Any] = {}
        if working_dir_uri:
            env["working_dir"] = working_dir_uri
        if python_bin:  # Ray expands ${PATH} from the node's own environment
            env["env_vars"] = {"PATH": f"{python_bin}:${{PATH}}"}
        if env:
            body["runtime_env"] = env
        # One submission id for every try: a retry after a 500 whose job did start finds it there
        # instead of starting it twice. Ray answers 500 while the head's job agent is not up yet
        # (right after `ray start`, or on a busy head): retried under a deadline.
        import uuid

        from gcpdl.deadline import Deadline

        body["submission_id"] = job = f"gcpdl-{uuid.uuid4().hex[:12]}"
        deadline = Deadline(self.submit_wait, what="Ray's job agent to take the job")
        pause, tried = self.retry_pause, False
        while True:
            status, out = self._call("POST", "/api/jobs/", json.dumps(body).encode())
            text = " ".join(out[:300].decode(errors="replace").split())
            if status == 200:
                return json.loads(out).get("submission_id") or job
            if tried and status == 400 and "already exists" in text:
                return job
            if status < 500 or deadline.remaining() < pause:
                raise GcpdlError(f"Ray refused the job (HTTP {status}): {text}")
            deadline.pause(pause)
            pause, tried = min(10.0, pause * 2), True

    def status(self, job: str) -> dict[str, Any]:
        status, out = self._call("GET", f"/api/jobs/{job}")
        if status != 200:
            raise GcpdlError(f"Ray did not say how job {job} is doing (HTTP {status}).")
        return json.loads(out)

    def logs(self, job: str) -> str:
        status, out = self._call("GET", f"/api/jobs/{job}/logs")
        return json.loads(out).get("logs", "") if status == 200 else ""

    def stop(self, job: str) -> None:
        self._call("POST", f"/api/jobs/{job}/stop")


TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def follow(api: JobApi, job: str, emit: Callable[[str], None], pause: Callable[[float], None]) -> dict[str, Any]:
    """Stream the job's log (new lines as they come) until it ends; its final status."""
    shown = 0
    while True:
        info = api.status(job)
        text = api.logs(job)
        if len(text) > shown:
            for line in text[shown:].splitlines():
                emit(line)
            shown = len(text)
        if info.get("status") in TERMINAL:
            return info
        pause(JOB_POLL)


__all__ = ["JobApi", "RAY_VERSION", "RayNotRunning", "RayPorts", "follow", "head_command", "install_command",
           "package_dir", "start", "state", "worker_command"]
