"""The self-healing Jupyter tunnel, on real parts: paramiko direct-tcpip through the fixture
sshd to the session's real jupyter server. Many concurrent connections, a websocket, a
multi-MB transfer checked by hash, then the SSH connection is killed and the tunnel heals."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from gcpdl.errors import InvalidInput
from gcpdl.ssh.hostkeys import HostKey
from gcpdl.ssh.keys import ensure_keypair
from gcpdl.ssh.session import open_transport
from gcpdl.ssh.target import SshTarget
from gcpdl.ssh.tunnel import ForwardingRefused, RemotePortClosed, Tunnel, bind_local, open_forward
from tests.fixtures.ports import free_port
from tests.fixtures.ssh import wait_until


def _target(sshd, port=None) -> SshTarget:
    keys = tuple(HostKey(t, b) for t, b in sshd.host_public_keys.items())
    return SshTarget("box", "us-central1-a", "4242", "RUNNING", "127.0.0.1", port or sshd.port, sshd.user, keys)


@pytest.fixture
def events():
    return []


@pytest.fixture
def tunnel(sshd, jupyter_server, events):
    sshd.authorize(ensure_keypair().public_line)
    target = _target(sshd)
    t = Tunnel(
        lambda: open_transport(target, timeout=5),
        ("127.0.0.1", jupyter_server.port),
        keepalive=0.2,
        probe_timeout=2.0,
        backoff_base=0.05,
        backoff_cap=0.5,
        reconnect_window=30,
        on_event=events.append,
    ).start()
    yield t
    t.close()


def _url(tunnel, path: str) -> str:
    return f"http://127.0.0.1:{tunnel.local_port}{path}"


def _auth(jupyter_server) -> dict:
    return {"Authorization": f"token {jupyter_server.token}"}


def test_many_requests_over_concurrent_connections(tunnel, jupyter_server):
    def worker(_: int) -> list[int]:
        with requests.Session() as s:  # one keep-alive connection per worker
            return [s.get(_url(tunnel, "/api/status"), headers=_auth(jupyter_server), timeout=10).status_code for _ in range(16)]

    with ThreadPoolExecutor(8) as pool:
        codes = [c for batch in pool.map(worker, range(8)) for c in batch]
    assert codes == [200] * 128
    assert tunnel.connections >= 8  # the workers really had their own connections


def _upload(tunnel, jupyter_server, name: str, payload: bytes) -> None:
    import base64

    body = {"type": "file", "format": "base64", "content": base64.b64encode(payload).decode()}
    r = requests.put(_url(tunnel, f"/api/contents/{name}"), data=json.dumps(body), headers=_auth(jupyter_server), timeout=60)
    assert r.status_code in (200, 201), r.text[:200]


def test_multi_megabyte_transfer_both_ways_hash_matches(tunnel, jupyter_server):
    payload = os.urandom(6 * 1024 * 1024)
    _upload(tunnel, jupyter_server, "big.bin", payload)
    assert (jupyter_server.root_dir / "big.bin").read_bytes() == payload  # the upload arrived intact
    r = requests.get(_url(tunnel, "/files/big.bin"), headers=_auth(jupyter_server), timeout=60)
    assert hashlib.sha256(r.content).hexdigest() == hashlib.sha256(payload).hexdigest()


def _terminal_ws(tunnel, jupyter_server):
    import websocket

    r = requests.post(_url(tunnel, "/api/terminals"), headers=_auth(jupyter_server), timeout=10)
    assert r.status_code == 200, r.text[:200]
    name = r.json()["name"]
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{tunnel.local_port}/terminals/websocket/{name}", header=_auth(jupyter_server), timeout=10
    )
    return ws, name


def _echo(ws, marker: str) -> None:
    ws.send(json.dumps(["stdin", f"echo {marker[:4]}''{marker[4:]}\r"]))  # the echo of the typed line is not a match
    seen = ""
    while marker not in seen:
        kind, *data = json.loads(ws.recv())
        if kind == "stdout":
            seen += data[0]


def test_websocket_to_a_terminal(tunnel, jupyter_server):
    ws, name = _terminal_ws(tunnel, jupyter_server)
    try:
        _echo(ws, "tunnel-ws-ok")
    finally:
        ws.close()
        requests.delete(_url(tunnel, f"/api/terminals/{name}"), headers=_auth(jupyter_server), timeout=10)


def test_recovers_when_the_ssh_connection_is_killed_mid_transfer(tunnel, jupyter_server, sshd, events):
    payload = os.urandom(8 * 1024 * 1024)
    (jupyter_server.root_dir / "heal.bin").write_bytes(payload)
    want = hashlib.sha256(payload).hexdigest()
    ws, name = _terminal_ws(tunnel, jupyter_server)
    _echo(ws, "before-drop")

    r = requests.get(_url(tunnel, "/files/heal.bin"), headers=_auth(jupyter_server), stream=True, timeout=10)
    got = r.raw.read(256 * 1024)
    assert len(got) == 256 * 1024
    assert sshd.kill_connections() >= 1  # the SSH connection dies mid-transfer
    interrupted = False
    try:
        got += r.raw.read()
    except Exception:
        interrupted = True
    assert interrupted or hashlib.sha256(got).hexdigest() != want  # that transfer could not finish
    with pytest.raises(Exception):  # the websocket opened before the drop is gone too
        _echo(ws, "after-drop")

    assert wait_until(lambda: any(e.kind == "reconnected" for e in events), timeout=20), events
    assert [e.kind for e in events][:1] == ["lost"]
    r = requests.get(_url(tunnel, "/files/heal.bin"), headers=_auth(jupyter_server), timeout=60)
    assert hashlib.sha256(r.content).hexdigest() == want
    ws2, name2 = _terminal_ws(tunnel, jupyter_server)
    _echo(ws2, "after-heal")
    ws2.close()
    for n in (name, name2):
        requests.delete(_url(tunnel, f"/api/terminals/{n}"), headers=_auth(jupyter_server), timeout=10)
    assert tunnel.reconnects >= 1 and tunnel.failure is None


def test_new_connection_reconnects_on_demand(sshd, jupyter_server, events):
    """Without the monitor (long keepalive), the first connection after a drop reconnects."""
    sshd.authorize(ensure_keypair().public_line)
    target = _target(sshd)
    with Tunnel(lambda: open_transport(target, timeout=5), ("127.0.0.1", jupyter_server.port), keepalive=3600, on_event=events.append) as t:
        assert requests.get(_url(t, "/api/status"), headers=_auth(jupyter_server), timeout=10).status_code == 200
        sshd.kill_connections()
        assert wait_until(lambda: not t.transport.is_active(), timeout=10)
        assert requests.get(_url(t, "/api/status"), headers=_auth(jupyter_server), timeout=10).status_code == 200
        assert [e.kind for e in events] == ["lost", "reconnected"]


def test_forwarding_refused_and_closed_port_are_told_apart(sshd_factory, sshd):
    sshd.authorize(ensure_keypair().public_line)
    strict = sshd_factory.start(AllowTcpForwarding="no")
    t = open_transport(_target(strict))
    try:
        with pytest.raises(ForwardingRefused) as e:
            open_forward(t, ("127.0.0.1", free_port()))
        assert "AllowTcpForwarding no" in e.value.message
    finally:
        t.close()
    t = open_transport(_target(sshd))
    try:
        with pytest.raises(RemotePortClosed):
            open_forward(t, ("127.0.0.1", free_port()))
        assert t.is_active()  # a refused channel leaves the connection up
    finally:
        t.close()


def test_local_port_busy_explicit_is_an_error_default_moves_on():
    first = bind_local(None, default=free_port())
    busy = first.getsockname()[1]
    try:
        with pytest.raises(InvalidInput) as e:
            bind_local(busy)
        assert e.value.message == f"Local port {busy} is already in use."
        second = bind_local(None, default=busy)
        assert second.getsockname()[1] > busy
        second.close()
    finally:
        first.close()


def test_close_ends_open_connections_and_threads(tunnel, jupyter_server):
    ws, name = _terminal_ws(tunnel, jupyter_server)
    _echo(ws, "open")
    before = threading.active_count()
    tunnel.close()
    with pytest.raises(Exception):
        _echo(ws, "closed")
    assert wait_until(lambda: threading.active_count() < before, timeout=10)


class FreezableProxy:
    """A TCP relay in front of sshd whose live connections can be frozen: bytes stop flowing
    but nothing is closed, like a laptop that slept or a NAT that forgot the connection."""

    def __init__(self, target_port: int):
        import socket

        self.target_port = target_port
        self.frozen = threading.Event()
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.live: list = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                a, _ = self.server.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target_port))
            gate = threading.Event()  # set: this connection is frozen
            self.live.append(gate)
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(src, dst, gate), daemon=True).start()

    @staticmethod
    def _pump(src, dst, gate) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if gate.is_set():
                    continue  # swallowed: the peer never hears back
                dst.sendall(data)
        except OSError:
            pass

    def freeze_live_connections(self) -> None:
        for gate in self.live:
            gate.set()

    def close(self) -> None:
        self.server.close()


def test_silent_dead_link_is_detected_by_keepalive_and_healed(sshd, jupyter_server, events):
    sshd.authorize(ensure_keypair().public_line)
    proxy = FreezableProxy(sshd.port)
    target = _target(sshd, port=proxy.port)
    t = Tunnel(
        lambda: open_transport(target, timeout=5),
        ("127.0.0.1", jupyter_server.port),
        keepalive=0.2, probe_timeout=0.5, backoff_base=0.05, backoff_cap=0.5, on_event=events.append,
    ).start()
    try:
        assert requests.get(_url(t, "/api/status"), headers=_auth(jupyter_server), timeout=10).status_code == 200
        proxy.freeze_live_connections()  # TCP stays open; nothing gets through any more
        assert wait_until(lambda: any(e.kind == "reconnected" for e in events), timeout=20), events
        assert [e.kind for e in events][:1] == ["lost"]
        assert requests.get(_url(t, "/api/status"), headers=_auth(jupyter_server), timeout=10).status_code == 200
    finally:
        t.close()
        proxy.close()


def test_gives_up_at_once_on_a_changed_host_key(sshd, jupyter_server, events):
    from gcpdl.errors import HostKeyMismatch

    sshd.authorize(ensure_keypair().public_line)
    good = _target(sshd)
    bogus = SshTarget(**{**good.__dict__, "guest_keys": (HostKey("ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAIDQ5w7oNyQm0Zx2m1b1ZKZtJp0mC5hH0yTQp4QGJ2x6a"),)})
    targets = iter([good])  # the first connection is fine; after the drop the VM "changed"
    t = Tunnel(lambda: open_transport(next(targets, bogus), timeout=5), ("127.0.0.1", jupyter_server.port),
               keepalive=0.2, backoff_base=0.05, on_event=events.append).start()
    sshd.kill_connections()
    with pytest.raises(HostKeyMismatch):
        t.wait(timeout=20)
    assert [e.kind for e in events] == ["lost", "gave-up"]
