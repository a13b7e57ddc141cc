"""The autostop agent's decisions, played out in simulated minutes against the REAL jupyter server
(session fixture), a small metadata server of our own (the protocol peer the agent talks to on a
VM), an injected clock and an injected stop command.

Every scenario records how many simulated minutes the agent took to stop the VM (or that it did
not); the last test prints that table (``pytest tests/test_agent.py -s`` or
``bench/autostop_scenarios.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from gcpdl.agent import signals as sig
from gcpdl.agent.main import Agent, stop_reason
from gcpdl.agent.metadata import Metadata
from gcpdl.agent.policy import IdlePolicy, parse_window
from tests.fixtures.ports import free_port

TICK = 60.0
RESULTS: dict[str, str] = {}  # scenario -> "stopped after N min" / "not stopped in N min"


# --- the metadata server the agent talks to ------------------------------------------------------
class MetadataServer:
    """GET instance/attributes/KEY, GET instance/attributes/?recursive=true[&wait_for_change=true]
    and PUT instance/guest-attributes/NS/KEY, all requiring Metadata-Flavor: Google."""

    def __init__(self) -> None:
        self.attributes: dict[str, str] = {}
        self.guest: dict[str, str] = {}
        self.changed = threading.Condition()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep pytest output clean
                pass

            def _send(self, code: int, body: str = "", etag: str | None = None) -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Metadata-Flavor", "Google")
                self.send_header("Content-Length", str(len(data)))
                if etag:
                    self.send_header("ETag", etag)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.headers.get("Metadata-Flavor") != "Google":
                    return self._send(403, "Missing Metadata-Flavor:Google header.")
                url = urlparse(self.path)
                q = parse_qs(url.query)
                prefix = "/computeMetadata/v1/instance/attributes/"
                if not url.path.startswith(prefix):
                    return self._send(404)
                key = url.path[len(prefix):]
                if key:
                    with server.changed:
                        value = server.attributes.get(key)
                    return self._send(200, value) if value is not None else self._send(404)
                with server.changed:
                    if q.get("wait_for_change") == ["true"] and q.get("last_etag") == [server.etag()]:
                        server.changed.wait(float(q.get("timeout_sec", ["60"])[0]))
                    return self._send(200, json.dumps(server.attributes), server.etag())

            def do_PUT(self):
                if self.headers.get("Metadata-Flavor") != "Google":
                    return self._send(403)
                prefix = "/computeMetadata/v1/instance/guest-attributes/"
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                server.guest[self.path[len(prefix):]] = body
                self._send(200)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def etag(self) -> str:
        return hashlib.sha1(json.dumps(self.attributes, sort_keys=True).encode()).hexdigest()[:16]

    def set(self, key: str, value: str) -> None:
        with self.changed:
            self.attributes[key] = value
            self.changed.notify_all()


@pytest.fixture(scope="module")
def metadata_server():
    server = MetadataServer()
    yield server
    server.httpd.shutdown()


@pytest.fixture
def md(metadata_server):
    metadata_server.attributes.clear()
    metadata_server.guest.clear()
    return metadata_server


# --- simulated time ------------------------------------------------------------------------------
class SimClock:
    """Monotonic and wall clocks the test moves; ``sleep`` advances both and fires events."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.start = self.mono
        self.wall = 1_795_000_000.0  # 2026-11-18
        self.events: dict[int, list] = {}

    @property
    def minute(self) -> int:
        return round((self.mono - self.start) / 60)

    def at(self, minute: int, fn) -> None:
        self.events.setdefault(minute, []).append(fn)

    def sleep(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds
        for fn in self.events.pop(self.minute, []):
            fn()


class Stopper:
    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self.calls: list[int] = []

    def __call__(self) -> None:
        self.calls.append(self.clock.minute)


def make_agent(signals, md: MetadataServer | None, clock: SimClock, stopper: Stopper, metadata_host: str | None = None):
    host = metadata_host or (md.host if md else f"127.0.0.1:{free_port()}")
    return Agent(
        signals=signals,
        metadata=Metadata(host, timeout=2.0),
        stop=stopper,
        policy=IdlePolicy(tick_seconds=TICK),
        clock=lambda: clock.mono,
        wall=lambda: clock.wall,
        sleep=clock.sleep,
        log=lambda line: None,
        watch_metadata=False,
    )


def play(name: str, agent: Agent, clock: SimClock, stopper: Stopper, minutes: int) -> int | None:
    """Run the agent's own loop for ``minutes`` simulated minutes; the minute it stopped, or None."""
    agent.run(max_ticks=minutes + 1)
    stopped = stopper.calls[0] if stopper.calls else None
    RESULTS[name] = f"stopped after {stopped} min" if stopped is not None else f"not stopped in {minutes} min"
    return stopped


def quiet(name: str) -> sig.Reading:
    return sig.Reading(name, sig.IDLE, "")


class Fixed:
    """A signal with a scripted reading per simulated minute (default idle)."""

    def __init__(self, name: str, clock: SimClock, script=None):
        self.name, self.clock, self.script = name, clock, script or {}

    def read(self) -> sig.Reading:
        return sig.Reading(self.name, self.script(self.clock.minute) if callable(self.script) else sig.IDLE)


def no_gpu():
    return sig.GpuSignal(reader=lambda: None, expected=False)


def no_ssh():
    return sig.SshSignal(table=lambda: [])


# --- the real jupyter server ---------------------------------------------------------------------
def endpoint(server) -> sig.JupyterEndpoint:
    return sig.JupyterEndpoint(server.url, server.token)


def wait_until(predicate, what: str, seconds: float = 60.0):
    """A bounded wait on the real server's state (kernels take a moment to start)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def settle(read, quiet: float = 0.4, seconds: float = 30.0) -> None:
    """Wait until a real-server value stops changing (trailing iopub/pty output), so that what
    happens in one simulated minute does not leak into the next, which is milliseconds later."""
    deadline = time.monotonic() + seconds
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
    raise AssertionError("value never settled")


class Kernel:
    """A kernel on the real server, driven over its websocket channel like JupyterLab does."""

    def __init__(self, server) -> None:
        import websocket

        self.server = server
        self.id = server.api("POST", "/api/kernels", {"name": "python3"})["id"]
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{server.port}/api/kernels/{self.id}/channels?token={server.token}", timeout=30
        )
        self.session = uuid.uuid4().hex

    def state(self) -> str | None:
        for k in self.server.api("GET", "/api/kernels"):
            if k["id"] == self.id:
                return k["execution_state"]
        return None

    def execute(self, code: str) -> None:
        msg = {
            "header": {"msg_id": uuid.uuid4().hex, "username": "test", "session": self.session,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }
        self.ws.send(json.dumps(msg))

    def last_activity(self) -> str | None:
        for k in self.server.api("GET", "/api/kernels"):
            if k["id"] == self.id:
                return k["last_activity"]
        return None

    def run_to_idle(self, code: str) -> None:
        self.execute(code)
        wait_until(lambda: self.state() == "idle", "the cell to finish")
        settle(self.last_activity)

    def close(self) -> None:
        try:
            self.server.api("POST", f"/api/kernels/{self.id}/interrupt")
        finally:
            self.ws.close()
            self.server.api("DELETE", f"/api/kernels/{self.id}")


@pytest.fixture
def kernel(jupyter_server):
    k = Kernel(jupyter_server)
    k.run_to_idle("1 + 1")  # a notebook that ran a cell and was left alone
    yield k
    k.close()


@pytest.fixture
def clean_terminals(jupyter_server):
    yield
    for t in jupyter_server.api("GET", "/api/terminals"):
        jupyter_server.api("DELETE", f"/api/terminals/{t['name']}")


def jupyter_agent(jupyter_server, md, clock, stopper, gpu=None):
    signals = [sig.JupyterSignal(lambda: endpoint(jupyter_server)), gpu or no_gpu(), no_ssh(),
               sig.SyncSignal("/nonexistent/sync.lock", table=lambda: [])]
    return make_agent(signals, md, clock, stopper)


# --- scenarios against the real jupyter server ---------------------------------------------------
def test_idle_kernel_stops_after_the_window(jupyter_server, md, kernel):
    clock = SimClock()
    stopper = Stopper(clock)
    agent = jupyter_agent(jupyter_server, md, clock, stopper)
    # the kernel is new at the first look (activity), idle from then on
    assert play("idle kernel (real Jupyter), default 60 min", agent, clock, stopper, 120) == 61
    assert stopper.calls == [61]
    assert md.guest == {"gcpdl/autostop": stop_reason(60, clock.wall)}
    assert md.guest["gcpdl/autostop"].startswith("stopped after 60 min idle at 2026-")
    assert agent.stopped_reason == md.guest["gcpdl/autostop"]


def test_kernel_running_a_long_cell_is_never_stopped(jupyter_server, md, kernel):
    kernel.execute("import time; time.sleep(30)")
    wait_until(lambda: kernel.state() == "busy", "the kernel to be busy")
    clock = SimClock()
    stopper = Stopper(clock)
    agent = jupyter_agent(jupyter_server, md, clock, stopper)
    assert play("kernel executing a long cell (real Jupyter)", agent, clock, stopper, 180) is None
    assert kernel.state() == "busy"  # still running when the simulation ended
    assert md.guest == {}


def test_cell_that_finishes_restarts_the_window(jupyter_server, md, kernel):
    clock = SimClock()
    stopper = Stopper(clock)
    agent = jupyter_agent(jupyter_server, md, clock, stopper)
    clock.at(40, lambda: kernel.run_to_idle("x = sum(range(10))"))  # a short cell at minute 40
    assert play("short cell run at minute 40 (real Jupyter)", agent, clock, stopper, 180) == 101


def test_open_terminal_counts_while_used(jupyter_server, md, kernel, clean_terminals):
    import websocket

    clock = SimClock()
    stopper = Stopper(clock)
    agent = jupyter_agent(jupyter_server, md, clock, stopper)
    term: dict = {}

    def open_terminal():
        term["name"] = jupyter_server.api("POST", "/api/terminals", {})["name"]
        settle(lambda: jupyter_server.api("GET", "/api/terminals"))

    def type_in_terminal():
        before = jupyter_server.api("GET", "/api/terminals")[0]["last_activity"]
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{jupyter_server.port}/terminals/websocket/{term['name']}?token={jupyter_server.token}", timeout=30)
        ws.send(json.dumps(["stdin", "echo hi\r"]))
        wait_until(lambda: jupyter_server.api("GET", "/api/terminals")[0]["last_activity"] != before, "terminal activity")
        ws.close()
        settle(lambda: jupyter_server.api("GET", "/api/terminals"))

    clock.at(30, open_terminal)
    clock.at(50, type_in_terminal)
    # opened at 30 (activity), typed in at 50 (activity), then left open and quiet for 60 min
    assert play("terminal opened at 30, used at 50, left open (real Jupyter)", agent, clock, stopper, 200) == 111
    assert len(jupyter_server.api("GET", "/api/terminals")) == 1  # still open when it stopped


def test_jupyter_refusing_connections_is_unknown_and_never_stops(md):
    clock = SimClock()
    stopper = Stopper(clock)
    dead = sig.JupyterEndpoint(f"http://127.0.0.1:{free_port()}/", "x")
    jupyter = sig.JupyterSignal(lambda: dead, timeout=1.0)
    reading = jupyter.read()
    assert reading.state == sig.UNKNOWN and "unreadable" in reading.detail
    agent = make_agent([jupyter, no_gpu(), no_ssh()], md, clock, stopper)
    assert play("Jupyter API refusing connections", agent, clock, stopper, 180) is None
    assert md.guest == {}


def test_wrong_token_is_unknown(jupyter_server):
    reading = sig.JupyterSignal(lambda: sig.JupyterEndpoint(jupyter_server.url, "wrong")).read()
    assert reading.state == sig.UNKNOWN
    assert "403" in reading.detail


def test_no_jupyter_server_found_is_unknown(tmp_path):
    reading = sig.JupyterSignal(lambda: sig.discover_jupyter([str(tmp_path / "jpserver-*.json")])).read()
    assert reading == sig.Reading("jupyter", sig.UNKNOWN, "no Jupyter server found")


def test_discovers_the_running_server_from_its_runtime_file(jupyter_server):
    found = sig.discover_jupyter([str(jupyter_server.runtime_dir / "jpserver-*.json")])
    assert found == sig.JupyterEndpoint(jupyter_server.url, jupyter_server.token)
    assert sig.JupyterSignal(lambda: found).read().state in (sig.IDLE, sig.BUSY)


def test_discovery_skips_runtime_files_of_dead_servers(tmp_path, jupyter_server):
    (tmp_path / "jpserver-1.json").write_text(json.dumps({"pid": 2**22 + 1, "url": "http://127.0.0.1:1/", "token": "old"}))
    assert sig.discover_jupyter([str(tmp_path / "jpserver-*.json")]) is None


# --- other signals through the same loop ---------------------------------------------------------
def idle_jupyter(clock):
    return Fixed("jupyter", clock)


@pytest.mark.parametrize(
    "name, gpu, expected",
    [
        ("no GPU on the VM, nothing running", sig.GpuSignal(reader=lambda: None, expected=False), 60),
        ("GPU at 3% (under the 10% threshold)", sig.GpuSignal(reader=lambda: [3.0]), 60),
        ("GPU at 85% (training)", sig.GpuSignal(reader=lambda: [85.0, 0.0]), None),
        ("GPU expected but NVML/nvidia-smi missing", sig.GpuSignal(reader=lambda: None, expected=True), None),
        ("GPU reader raising (driver not loaded)", sig.GpuSignal(reader=lambda: 1 / 0), None),
    ],
)
def test_gpu_utilisation(md, name, gpu, expected):
    clock = SimClock()
    stopper = Stopper(clock)
    agent = make_agent([idle_jupyter(clock), gpu, no_ssh()], md, clock, stopper)
    assert play(name, agent, clock, stopper, 180) == expected


def test_gpu_busy_for_a_while_then_idle(md):
    clock = SimClock()
    stopper = Stopper(clock)
    gpu = sig.GpuSignal(reader=lambda: [97.0] if clock.minute < 45 else [0.0])
    agent = make_agent([idle_jupyter(clock), gpu, no_ssh()], md, clock, stopper)
    assert play("GPU training until minute 45, then idle", agent, clock, stopper, 180) == 105


SSHD_INTERACTIVE = """\
    PID    PPID COMMAND
    812       1 sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups
   2001     812 sshd: alice [priv]
   2007    2001 sshd: alice@pts/0
   2008    2007 -bash
"""
SSHD_TUNNEL_ONLY = """\
    PID    PPID COMMAND
    812       1 sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups
   3001     812 sshd-session: alice [priv]
   3007    3001 sshd-session: alice@notty
"""
SSHD_REMOTE_COMMAND = SSHD_TUNNEL_ONLY + "   3010    3007 python3 train.py\n"


@pytest.mark.parametrize(
    "name, ps, expected",
    [
        ("interactive SSH session (pty) open", SSHD_INTERACTIVE, None),
        ("SSH tunnel only (gcpdl jupyter)", SSHD_TUNNEL_ONLY, 60),
        ("SSH session running a command (no pty)", SSHD_REMOTE_COMMAND, None),
    ],
)
def test_ssh_sessions_from_fixture_input(md, name, ps, expected):
    clock = SimClock()
    stopper = Stopper(clock)
    ssh = sig.SshSignal(table=lambda: sig.parse_ps(ps))
    agent = make_agent([idle_jupyter(clock), no_gpu(), ssh], md, clock, stopper)
    assert play(name, agent, clock, stopper, 180) == expected


def test_sync_lock_with_a_live_pid_blocks_and_a_stale_one_does_not(md, tmp_path):
    lock = tmp_path / "sync.lock"
    lock.write_text(f"{os.getpid()}\n")
    clock = SimClock()
    stopper = Stopper(clock)
    sync = sig.SyncSignal(str(lock), table=lambda: [])
    agent = make_agent([idle_jupyter(clock), no_gpu(), no_ssh(), sync], md, clock, stopper)
    clock.at(90, lambda: lock.write_text("4194305\n"))  # the sync died; its lock stays behind
    assert play("gcpdl sync running until minute 90 (lock file), stale lock after", agent, clock, stopper, 240) == 150


def test_sync_seen_by_process_scan(md):
    clock = SimClock()
    stopper = Stopper(clock)
    table = sig.parse_ps("  PID PPID COMMAND\n 4242 4000 /usr/bin/python3 /opt/gcpdl/gcpdl.pyz sync gs://b/imagenet /data\n")
    sync = sig.SyncSignal("/nonexistent/sync.lock", table=lambda: table)
    agent = make_agent([idle_jupyter(clock), no_gpu(), no_ssh(), sync], md, clock, stopper)
    assert play("gcpdl sync running (process scan, no lock)", agent, clock, stopper, 180) is None


# --- metadata: the window setting and the metadata server itself ---------------------------------
def test_metadata_server_unreachable_never_stops():
    clock = SimClock()
    stopper = Stopper(clock)
    agent = make_agent([idle_jupyter(clock), no_gpu(), no_ssh()], None, clock, stopper)
    assert play("metadata server unreachable", agent, clock, stopper, 180) is None


def test_window_from_metadata_and_changed_while_running(md):
    md.set("gcpdl-autostop", "90")
    clock = SimClock()
    stopper = Stopper(clock)
    agent = make_agent([idle_jupyter(clock), no_gpu(), no_ssh()], md, clock, stopper)
    clock.at(20, lambda: md.set("gcpdl-autostop", "30"))  # gcpdl autostop NAME 30m at minute 20
    assert play("window 90, set to 30 at minute 20 (all idle)", agent, clock, stopper, 180) == 30
    assert md.guest["gcpdl/autostop"].startswith("stopped after 30 min idle at ")


def test_autostop_off_never_stops_and_on_again_counts_afresh(md):
    md.set("gcpdl-autostop", "off")
    clock = SimClock()
    stopper = Stopper(clock)
    agent = make_agent([idle_jupyter(clock), no_gpu(), no_ssh()], md, clock, stopper)
    clock.at(120, lambda: md.set("gcpdl-autostop", "45m"))
    assert play("autostop off, then 45m at minute 120", agent, clock, stopper, 240) == 165


# --- clocks --------------------------------------------------------------------------------------
def test_wall_clock_jump_does_not_trigger_a_stop(md):
    clock = SimClock()
    stopper = Stopper(clock)
    agent = make_agent([idle_jupyter(clock), Fixed("gpu", clock, lambda m: sig.BUSY if m < 10 else sig.IDLE), no_ssh()], md, clock, stopper)

    def jump():  # NTP or a user sets the wall clock two days ahead
        clock.wall += 2 * 86400

    clock.at(20, jump)
    assert play("wall clock jumps +2 days at minute 20 (idle from 10)", agent, clock, stopper, 180) == 70


def test_monotonic_gap_restarts_the_window(md):
    clock = SimClock()
    stopper = Stopper(clock)
    agent = make_agent([idle_jupyter(clock), no_gpu(), no_ssh()], md, clock, stopper)

    def freeze():  # the agent was frozen (SIGSTOP, suspended VM) for 3 hours
        clock.mono += 3 * 3600

    clock.at(50, freeze)
    stopped = play("agent frozen 3 h at minute 50 (all idle)", agent, clock, stopper, 400)
    assert stopped == 50 + 180 + 61  # a full window of watched ticks after the gap
    RESULTS["agent frozen 3 h at minute 50 (all idle)"] = f"stopped after {stopped} min (window restarted after the gap)"


def test_clock_going_backwards_restarts_the_window():
    policy = IdlePolicy(tick_seconds=60)
    idle = [quiet("jupyter")]
    for t in (0, 60, 120, 180, 240):
        assert not policy.observe(t, idle, 5).stop
    d = policy.observe(100, idle, 5)  # backwards: the idle time so far cannot be trusted
    assert not d.stop and d.blockers == ("clock gap of -140s between ticks",)
    assert policy.observe(160, idle, 5).idle_seconds == 0
    assert policy.observe(460, idle, 5).stop is False  # 460-160 = 300 s, but that was a gap too
    assert [policy.observe(t, idle, 5).stop for t in (520, 580, 640, 700, 760, 820)] == [False] * 5 + [True]


def test_failing_stop_command_keeps_watching(md):
    clock = SimClock()
    calls = []

    def refuse():
        calls.append(clock.minute)
        raise OSError("shutdown: not permitted")

    agent = make_agent([idle_jupyter(clock), no_gpu(), no_ssh()], md, clock, Stopper(clock))
    agent.stop = refuse
    agent.run(max_ticks=200)
    assert calls == [60, 121, 182]  # each refusal restarts the window
    assert agent.stopped_reason is None


def test_metadata_change_wakes_the_agent_at_once(md):
    """Between ticks the agent long-polls the metadata server, so `gcpdl autostop` acts now."""
    agent = Agent(signals=[], metadata=Metadata(md.host), stop=lambda: None, log=lambda s: None)
    agent.wait(0.01)  # learns the current ETag
    timer = threading.Timer(0.2, lambda: md.set("gcpdl-autostop", "15"))
    timer.start()
    t0 = time.monotonic()
    agent.wait(30)
    assert time.monotonic() - t0 < 10  # woke on the change, not after the 30 s tick
    timer.join()


@pytest.mark.parametrize(
    "raw, minutes",
    [(None, 60), ("30", 30), ("30m", 30), ("2h", 120), ("1h30m", 90), ("off", None), ("0", None),
     ("banana", 60), ("", 60), ("1", 5), ("100000", 10080)],
)
def test_parse_window(raw, minutes):
    assert parse_window(raw) == minutes


def test_zz_print_scenario_table(capsys):
    rows = sorted(RESULTS.items(), key=lambda kv: kv[0])
    width = max((len(k) for k, _ in rows), default=10)
    with capsys.disabled():
        print("\n\nAutostop scenarios (simulated minutes, one tick per minute, window 60 min unless noted)")
        print(f"{'scenario':<{width}}  result")
        for k, v in rows:
            print(f"{k:<{width}}  {v}")


def test_journal_gets_a_line_per_change_not_per_minute(md):
    clock = SimClock()
    stopper = Stopper(clock)
    gpu = Fixed("gpu", clock, lambda m: sig.BUSY if 10 <= m < 20 else sig.IDLE)
    agent = make_agent([idle_jupyter(clock), gpu, no_ssh()], md, clock, stopper)
    lines: list[str] = []
    agent.log = lines.append
    agent.run(max_ticks=200)
    assert stopper.calls == [80]
    assert lines[0] == "idle 0.0/60 min"
    assert lines[1].startswith("idle 0.0/60 min; not idle: gpu=busy")
    assert lines[2] == "idle 0.0/60 min"
    assert lines[3].startswith("stopped after 60 min idle at ")
    assert len(lines) == 5  # ... and the decision that stopped it
