"""A local port forwarded to the VM over SSH `direct-tcpip` channels, healing itself.

Design, and why:
- One blocking copy loop per direction per connection (two threads), and a connection is
  ended only with close(). Half-closing a forwarded channel (`shutdown_write`) can make
  OpenSSH drop the whole SSH connection (paramiko issues 1705, 1584), and a select() loop on
  channel file descriptors proved unreliable; blocking loops held up.
- The SSH connection is shared by all forwarded connections (the notebook UI opens many,
  websockets included). A monitor thread probes it every ``keepalive`` seconds with an
  OpenSSH keepalive request and treats a missing answer as a dead link (laptop sleep, Wi-Fi
  change), because a half-open TCP connection never errors on its own.
- When the link dies it reconnects with exponential backoff under a bounded window, through
  the same ``connect`` callable (so host keys are verified again each time), and reports each
  step through ``on_event``. Connections open at the time of the drop are lost (their
  bytes cannot be replayed); new ones work as soon as the link is back.
Nothing here prints: the CLI turns events into messages.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from gcpdl.deadline import backoff
from gcpdl.errors import GcpdlError, HostKeyMismatch, InvalidInput, NotFound, SshError

if TYPE_CHECKING:  # pragma: no cover
    import paramiko

BUFFER = 65536  # one recv() from a local socket
# One recv() from a channel takes everything buffered: paramiko's BufferedPipe deletes what is
# read from the front of an array, so 64 KiB reads of a multi-MiB backlog copy the backlog
# again for every read (quadratic); reading it whole is one copy.
CHANNEL_READ = 16 * 1024 * 1024
KEEPALIVE = 15.0  # seconds between liveness probes
PROBE_TIMEOUT = 10.0  # no answer to a probe within this: the link is dead
RECONNECT_WINDOW = 600.0  # give up after this long without a connection
BACKOFF_BASE = 0.5
BACKOFF_CAP = 15.0
CHANNEL_TIMEOUT = 15.0
PORT_SCAN = 50  # 8888 busy: try up to 8937
# Not worth retrying: a changed host key (never retry into it) or a VM that was deleted.
PERMANENT = (HostKeyMismatch, NotFound)


class ForwardingRefused(SshError):
    """sshd on the VM does not allow TCP forwarding (AllowTcpForwarding no)."""


class RemotePortClosed(SshError):
    """Nothing listens on the remote end of the forward."""


@dataclass(frozen=True)
class TunnelEvent:
    kind: str  # "lost", "reconnecting", "reconnected", "gave-up", "channel-failed"
    message: str
    attempt: int = 0
    delay: float = 0.0


def bind_local(port: int | None, default: int = 8888, host: str = "127.0.0.1") -> socket.socket:
    """A listening socket on ``port`` (explicit: busy is an error) or on ``default`` or the next
    free port. Bound here, before any API call, and handed to the Tunnel: no race."""
    candidates = [port] if port is not None else list(range(default, default + PORT_SCAN))
    for p in candidates:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # SO_REUSEADDR: rerunning right after Ctrl-C must not trip over TIME_WAIT; Linux still
        # refuses a second listener on the same port, so "busy" stays detectable
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, p))
            s.listen(128)
            return s
        except OSError:
            s.close()
    if port is not None:
        raise InvalidInput(f"Local port {port} is already in use.", fix="Pick another with --port, or stop what is using it.")
    raise InvalidInput(f"No free local port between {default} and {default + PORT_SCAN - 1}.", fix="Pick one with --port.")


def open_forward(transport: "paramiko.Transport", remote: tuple[str, int], src: tuple[str, int] = ("127.0.0.1", 0), timeout: float = CHANNEL_TIMEOUT) -> "paramiko.Channel":
    """Open one direct-tcpip channel, mapping refusals to domain errors."""
    import paramiko

    try:
        return transport.open_channel("direct-tcpip", remote, src, timeout=timeout)
    except paramiko.ChannelException as e:
        if e.code == paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED:
            raise ForwardingRefused(
                "The VM's sshd refuses port forwarding (AllowTcpForwarding no), so gcpdl cannot tunnel to Jupyter.",
                fix="Set AllowTcpForwarding yes in /etc/ssh/sshd_config on the VM and restart sshd.",
            ) from None
        if e.code == paramiko.common.OPEN_FAILED_CONNECT_FAILED:
            raise RemotePortClosed(f"Nothing listens on {remote[0]}:{remote[1]} on the VM.") from None
        raise SshError(f"The VM refused a forwarded connection to {remote[0]}:{remote[1]}: {e.text}.") from None


def probe(transport: "paramiko.Transport", timeout: float = PROBE_TIMEOUT) -> bool:
    """True if the server answers a keepalive request within ``timeout``. paramiko's
    global_request(wait=True) has no timeout of its own, hence the helper thread."""
    done = threading.Event()

    def ask() -> None:
        try:
            transport.global_request("keepalive@openssh.com", wait=True)
        except Exception:
            pass
        finally:
            done.set()

    threading.Thread(target=ask, daemon=True, name="gcpdl-probe").start()
    return done.wait(timeout) and transport.is_active()


class Tunnel:
    """Forward ``listener`` (or a new socket on ``local_port``) to ``remote`` on the VM.

    ``connect`` returns a fresh, authenticated paramiko Transport; it is called again on every
    reconnect. ``transport`` lets a caller hand over a connection it already has.
    """

    def __init__(
        self,
        connect: Callable[[], "paramiko.Transport"],
        remote: tuple[str, int],
        local_port: int = 0,
        listener: socket.socket | None = None,
        transport: "paramiko.Transport | None" = None,
        keepalive: float = KEEPALIVE,
        probe_timeout: float = PROBE_TIMEOUT,
        reconnect_window: float = RECONNECT_WINDOW,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        on_event: Callable[[TunnelEvent], None] | None = None,
    ):
        self._connect = connect
        self.remote = remote
        self._listener = listener
        self._local_port = local_port
        self._transport = transport
        self.keepalive = keepalive
        self.probe_timeout = probe_timeout
        self.reconnect_window = reconnect_window
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._on_event = on_event
        self._lock = threading.Lock()  # one reconnect at a time
        self._closed = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self.failure: BaseException | None = None
        self.reconnects = 0
        self.connections = 0

    # --- life cycle ---------------------------------------------------------------------------
    def start(self) -> "Tunnel":
        if self._transport is None:
            self._transport = self._connect()
        if self._listener is None:
            self._listener = bind_local(self._local_port, host="127.0.0.1") if self._local_port else _ephemeral()
        for target, name in ((self._accept_loop, "accept"), (self._monitor_loop, "monitor")):
            threading.Thread(target=target, daemon=True, name=f"gcpdl-tunnel-{name}").start()
        return self

    @property
    def local_port(self) -> int:
        assert self._listener is not None, "start() first"
        return self._listener.getsockname()[1]

    @property
    def transport(self) -> "paramiko.Transport | None":
        return self._transport

    def wait(self, timeout: float | None = None) -> None:
        """Block until closed (Ctrl-C lands here in the main thread); raise if the tunnel gave up."""
        end = None if timeout is None else time.monotonic() + timeout
        # short waits keep the main thread responsive to KeyboardInterrupt
        while not self._closed.wait(0.5 if end is None else max(0.0, min(0.5, end - time.monotonic()))):
            if end is not None and time.monotonic() >= end:
                break
        if self.failure is not None:
            if isinstance(self.failure, GcpdlError):
                raise self.failure
            raise SshError(f"The tunnel to the VM failed: {self.failure}")

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._listener is not None:
            _close_socket(self._listener)
        with self._conns_lock:
            conns = list(self._conns)
        for s in conns:
            _close_socket(s)
        if self._transport is not None:
            self._transport.close()

    def __enter__(self) -> "Tunnel":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- events and reconnects --------------------------------------------------------------
    def _event(self, kind: str, message: str, attempt: int = 0, delay: float = 0.0) -> None:
        if self._on_event is not None:
            try:
                self._on_event(TunnelEvent(kind, message, attempt, delay))
            except Exception:
                pass  # a broken reporter must not break the tunnel

    def _live_transport(self) -> "paramiko.Transport":
        """The current transport, reconnecting (with backoff) if it is gone."""
        t = self._transport
        if t is not None and t.is_active():
            return t
        with self._lock:
            t = self._transport
            if t is not None and t.is_active():
                return t  # another thread already reconnected
            if self._closed.is_set():
                raise SshError("The tunnel is closed.")
            return self._reconnect()

    def _reconnect(self) -> "paramiko.Transport":
        if self._transport is not None:
            self._transport.close()
        self._event("lost", "Connection to the VM lost; reconnecting...")
        started = time.monotonic()
        attempt = 0
        while not self._closed.is_set():
            try:
                t = self._connect()
                self._transport = t
                self.reconnects += 1
                self._event("reconnected", f"Reconnected to the VM after {time.monotonic() - started:.1f}s.", attempt)
                return t
            except PERMANENT as e:
                self._give_up(e)
                raise
            except Exception as e:
                reason = str(e).split("\n")[0] or type(e).__name__
                if time.monotonic() - started >= self.reconnect_window:
                    err = SshError(f"Could not reconnect to the VM within {self.reconnect_window:g}s ({reason}).")
                    self._give_up(err)
                    raise err from None
                delay = backoff(attempt, base=self.backoff_base, cap=self.backoff_cap)
                attempt += 1
                self._event("reconnecting", f"Reconnect attempt {attempt} failed ({reason}); retrying in {delay:.1f}s.", attempt, delay)
                self._closed.wait(delay)
        raise SshError("The tunnel is closed.")

    def _give_up(self, error: BaseException) -> None:
        self.failure = error
        self._event("gave-up", str(error))
        self.close()

    def _monitor_loop(self) -> None:
        while not self._closed.wait(self.keepalive):
            t = self._transport
            try:
                if t is None or not t.is_active() or not probe(t, self.probe_timeout):
                    if t is not None:
                        t.close()  # a silent link: drop it so the next step reconnects
                    self._live_transport()
            except Exception:
                if self.failure is not None:
                    return

    # --- forwarding ---------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                sock, addr = self._listener.accept()
            except OSError:
                return  # listener closed
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._handle, args=(sock, addr), daemon=True, name="gcpdl-tunnel-conn").start()

    def _open(self, addr: tuple[str, int]) -> "paramiko.Channel":
        import paramiko

        for _ in range(3):
            t = self._live_transport()
            try:
                return open_forward(t, self.remote, addr)
            except (ForwardingRefused, RemotePortClosed):
                raise
            except (paramiko.SSHException, EOFError, OSError, SshError):
                if t.is_active():
                    raise
                # the link died under us: _live_transport reconnects on the next round
        raise SshError("Could not open a forwarded connection to the VM.")

    def _handle(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        with self._conns_lock:
            self._conns.add(sock)
        try:
            chan = self._open(addr)
        except Exception as e:
            self._event("channel-failed", f"A forwarded connection failed: {e}")
            self._forget(sock)
            _close_socket(sock)
            return
        self.connections += 1
        closed = threading.Event()

        def close_both() -> None:
            if not closed.is_set():
                closed.set()
                try:
                    chan.close()  # never shutdown_write(): see the module docstring
                except Exception:
                    pass  # the SSH link is already gone (EOFError from paramiko)
                _close_socket(sock)
                self._forget(sock)

        def pump(recv: Callable[[int], bytes], send: Callable[[bytes], None], size: int) -> None:
            try:
                while True:
                    data = recv(size)
                    if not data:
                        break
                    send(data)
            except Exception:
                pass
            finally:
                close_both()

        up = threading.Thread(target=pump, args=(sock.recv, chan.sendall, BUFFER), daemon=True, name="gcpdl-tunnel-up")
        up.start()
        pump(chan.recv, sock.sendall, CHANNEL_READ)
        up.join()

    def _forget(self, sock: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(sock)


def _ephemeral() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    return s


def _close_socket(s: socket.socket) -> None:
    # shutdown() first: close() alone does not wake a thread blocked in recv() on Linux
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
