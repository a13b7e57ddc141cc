#!/usr/bin/env python3
"""Throughput and request rate through gcpdl's Jupyter tunnel, against a direct loopback
connection and against the system `ssh -L`, measured in the same run.

    .venv/bin/python bench/tunnel_bench.py [--mb 64] [--seconds 3] [--concurrency 4] [--reps 3]

Needs root (a local OpenSSH sshd is started on a free port, as in the tests). Three separate
processes carry the data so no path shares the client's GIL: a backend (a byte source/sink
and a small HTTP/1.1 server), the gcpdl Tunnel, and `ssh -N -L`. Everything is on loopback,
so the numbers measure the forwarding cost (encryption, copies, threads), not a network.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import socketserver
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHUNK = 1 << 20


# --- backend (child process) ------------------------------------------------------------------
class _Blob(socketserver.BaseRequestHandler):
    """b"G"+size: send size bytes. b"P"+size+data: read them, answer b"K"."""

    def handle(self) -> None:
        sock = self.request
        try:
            head = _recv_exact(sock, 9)
        except (EOFError, OSError):
            return  # a readiness probe
        op, size = head[:1], struct.unpack("!Q", head[1:])[0]
        if op == b"G":
            block = os.urandom(CHUNK)
            left = size
            while left:
                n = min(left, CHUNK)
                sock.sendall(block[:n])
                left -= n
        else:
            left = size
            while left:
                data = sock.recv(min(left, CHUNK))
                if not data:
                    return
                left -= len(data)
            sock.sendall(b"K")


class _Small(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like a browser talking to Jupyter
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

    def do_GET(self) -> None:
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def run_backend() -> None:
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.daemon_threads = True
    blob = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Blob)
    ThreadingHTTPServer.daemon_threads = True
    small = ThreadingHTTPServer(("127.0.0.1", 0), _Small)
    for s in (blob, small):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print(blob.server_address[1], small.server_address[1], flush=True)
    sys.stdin.read()  # until the parent goes away


# --- gcpdl tunnel (child process) -------------------------------------------------------------
def run_tunnel(sshd_port: int, user: str, remotes: list[int], alias_id: str) -> None:
    from gcpdl.ssh.hostkeys import read_known
    from gcpdl.ssh.session import open_transport
    from gcpdl.ssh.target import SshTarget
    from gcpdl.ssh.tunnel import Tunnel

    keys = tuple(read_known(f"gcpdl-{alias_id}"))
    target = SshTarget("bench", "local", alias_id, "RUNNING", "127.0.0.1", sshd_port, user, keys)
    # one SSH connection carries every forward, as `gcpdl jupyter` does
    first = open_transport(target)
    tunnels = [Tunnel(lambda: open_transport(target), ("127.0.0.1", p), transport=first).start() for p in remotes]
    print(*[t.local_port for t in tunnels], flush=True)
    sys.stdin.read()


# --- client measurements ----------------------------------------------------------------------
def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise EOFError("connection closed")
        buf += data
    return bytes(buf)


def download(port: int, size: int) -> float:
    with socket.create_connection(("127.0.0.1", port)) as s:
        t0 = time.perf_counter()
        s.sendall(b"G" + struct.pack("!Q", size))
        left = size
        while left:
            data = s.recv(min(left, 1 << 18))
            if not data:
                raise EOFError("short download")
            left -= len(data)
        return size / (time.perf_counter() - t0) / 1e6


def upload(port: int, size: int) -> float:
    block = os.urandom(CHUNK)
    with socket.create_connection(("127.0.0.1", port)) as s:
        t0 = time.perf_counter()
        s.sendall(b"P" + struct.pack("!Q", size))
        left = size
        while left:
            n = min(left, CHUNK)
            s.sendall(block[:n])
            left -= n
        assert _recv_exact(s, 1) == b"K"
        return size / (time.perf_counter() - t0) / 1e6


def request_rate(port: int, seconds: float, concurrency: int) -> float:
    stop = time.perf_counter() + seconds
    counts = [0] * concurrency

    def worker(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.perf_counter() < stop:
            conn.request("GET", "/api/status")
            r = conn.getresponse()
            r.read()
            counts[i] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def latency_ms(port: int, n: int = 200) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", "/api/status")
        conn.getresponse().read()
        times.append(time.perf_counter() - t0)
    conn.close()
    return statistics.median(times) * 1000


def new_connections_per_s(port: int, n: int = 100) -> float:
    """A fresh TCP connection per request: what the notebook UI does on load (each one is a
    new SSH channel through a tunnel)."""
    t0 = time.perf_counter()
    for _ in range(n):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/api/status", headers={"Connection": "close"})
        conn.getresponse().read()
        conn.close()
    return n / (time.perf_counter() - t0)


def _wait_port(port: int, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing on port {port}")


def _child(args: list[str], env: dict) -> tuple[subprocess.Popen, list[int]]:
    p = subprocess.Popen([sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    line = p.stdout.readline()
    if not line:
        raise RuntimeError(f"child {args[0]} failed to start")
    return p, [int(x) for x in line.split()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=64, help="MB per bulk transfer")
    ap.add_argument("--reps", type=int, default=5, help="interleaved rounds over the three paths (medians)")
    ap.add_argument("--seconds", type=float, default=5.0, help="total request-rate time per path")
    ap.add_argument("--concurrency", type=int, default=4, help="keep-alive connections in the request-rate run")
    ap.add_argument("--backend", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--tunnel", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.backend:
        return run_backend()
    if a.tunnel:
        sshd_port, user, alias_id, *remotes = a.tunnel
        return run_tunnel(int(sshd_port), user, [int(r) for r in remotes], alias_id)
    if os.geteuid() != 0:
        sys.exit("tunnel_bench: run as root (it starts a local sshd that logs in as root)")

    from gcpdl.ssh import hostkeys
    from gcpdl.ssh.hostkeys import HostKey
    from gcpdl.ssh.keys import ensure_keypair
    from gcpdl.ssh.sshconfig import HostEntry
    from tests.fixtures.ssh import SshdFactory

    tmp = Path(tempfile.mkdtemp(prefix="gcpdl-bench-"))
    env = dict(os.environ, GCPDL_CONFIG_DIR=str(tmp / "cfg"))
    os.environ.update(GCPDL_CONFIG_DIR=str(tmp / "cfg"))
    procs: list[subprocess.Popen] = []
    (tmp / "sshd").mkdir()
    factory = SshdFactory(tmp / "sshd", {})
    try:
        sshd = factory.start()
        key = ensure_keypair()
        sshd.authorize(key.public_line)
        alias_id = "1"
        hostkeys.store(f"gcpdl-{alias_id}", [HostKey(t, b) for t, b in sshd.host_public_keys.items()])
        cfg = tmp / "ssh_config"
        cfg.write_text(HostEntry("bench", "127.0.0.1", alias_id, sshd.user, sshd.port).block())

        backend, (blob_port, http_port) = _child(["--backend"], env)
        procs.append(backend)
        tun, (g_blob, g_http) = _child(["--tunnel", str(sshd.port), sshd.user, alias_id, str(blob_port), str(http_port)], env)
        procs.append(tun)
        s_blob, s_http = _free(), _free()
        sshl = subprocess.Popen(
            ["ssh", "-F", str(cfg), "-N", "-o", "BatchMode=yes", "-L", f"{s_blob}:127.0.0.1:{blob_port}", "-L", f"{s_http}:127.0.0.1:{http_port}", "bench"],
            stdin=subprocess.DEVNULL,
        )
        procs.append(sshl)
        _wait_port(s_blob)
        _wait_port(s_http)

        paths = {"direct": (blob_port, http_port), "gcpdl tunnel": (g_blob, g_http), "ssh -L": (s_blob, s_http)}
        size = a.mb * 1024 * 1024
        rows: dict[str, dict[str, float]] = {}
        samples: dict[tuple[str, str], list[float]] = {}
        for bp, _ in paths.values():
            download(bp, CHUNK)  # warm up (connection, channel, caches)
        # rounds interleave the paths, so a burst of load elsewhere on a busy machine hits all
        # three alike instead of skewing one column
        for _ in range(a.reps):
            for name, (bp, hp) in paths.items():
                samples.setdefault((f"download MB/s ({a.mb} MB)", name), []).append(download(bp, size))
                samples.setdefault((f"upload MB/s ({a.mb} MB)", name), []).append(upload(bp, size))
                samples.setdefault((f"requests/s ({a.concurrency} keep-alive conns)", name), []).append(
                    request_rate(hp, a.seconds / a.reps, a.concurrency)
                )
                samples.setdefault(("request latency p50 ms (1 conn)", name), []).append(latency_ms(hp))
                samples.setdefault(("new connections/s (1 request each)", name), []).append(new_connections_per_s(hp))
        for (metric, name), values in samples.items():
            rows.setdefault(metric, {})[name] = statistics.median(values)
        _print(rows, a)
    finally:
        for p in procs:
            if p.stdin:
                p.stdin.close()
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        factory.stop_all()


def _free() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _print(rows: dict[str, dict[str, float]], a: argparse.Namespace) -> None:
    cols = ["direct", "gcpdl tunnel", "ssh -L"]
    w = max(len(r) for r in rows) + 2
    print(f"\n{'metric':<{w}}" + "".join(f"{c:>14}" for c in cols) + f"{'gcpdl/ssh -L':>14}{'gcpdl/direct':>14}")
    print("-" * (w + 14 * 5))
    for metric, vals in rows.items():
        line = f"{metric:<{w}}" + "".join(f"{vals[c]:>14.1f}" if vals[c] >= 10 else f"{vals[c]:>14.2f}" for c in cols)
        line += f"{vals['gcpdl tunnel'] / vals['ssh -L']:>14.2f}{vals['gcpdl tunnel'] / vals['direct']:>14.2f}"
        print(line)
    load = os.getloadavg()
    print(f"\n{os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; "
          f"each figure = median of {a.reps} interleaved rounds; ratios > 1 mean gcpdl is higher (for latency, higher is worse).")


if __name__ == "__main__":
    main()
