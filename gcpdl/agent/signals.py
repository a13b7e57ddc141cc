"""What the agent looks at. Each signal's ``read()`` returns a Reading: idle, busy or unknown.

The rule that matters: a signal that cannot be read is UNKNOWN, never idle, and the policy only
counts a tick as idle when every signal says IDLE. Stdlib only (see gcpdl/agent/__init__.py).

Decisions, in one place:
- Jupyter: a kernel whose execution_state is busy (anything but idle/starting/dead) is busy; a
  kernel or terminal that is new since the last tick, or whose last_activity changed since the
  last tick (a cell ran, a completion was asked for, the terminal printed), is activity. Changes are compared by value, never against the wall clock, so a clock jump cannot
  make old activity look stale. An open terminal with no input or output does not hold the VM up
  (an abandoned JupyterLab tab is the same trap as an idle kernel).
- GPU: busy when any GPU's utilisation is at or above the threshold. No GPU visible: idle when
  the VM has no GPU, unknown when it should have one (driver still installing, NVML broken).
- SSH: an sshd session with a pty (``sshd: user@pts/0``) is interactive; a session without a pty
  (``sshd: user@notty``) is busy only while it runs a command (it has child processes). A
  tunnel alone (``ssh -N -L``, gcpdl's Jupyter tunnel) has no pty and no children: not counted.
- sync: ``gcpdl sync`` on the VM holds SYNC_LOCK (a file holding its pid); as a second line, a
  process whose command line is ``... gcpdl ... sync ...`` or ``gcpdl.sync`` counts too.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import stat
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

IDLE, BUSY, UNKNOWN = "idle", "busy", "unknown"

SYNC_LOCK = "/run/gcpdl/sync.lock"  # written by `gcpdl sync` on the VM: its pid, one line
GPU_THRESHOLD = 10.0  # percent; a notebook drawing a plot flickers a few percent
HTTP_TIMEOUT = 5.0
# Where `jupyter server` writes jpserver-PID.json (url + token) for each user on the VM.
JUPYTER_RUNTIME_GLOBS = (
    "/home/*/.local/share/jupyter/runtime/jpserver-*.json",
    "/root/.local/share/jupyter/runtime/jpserver-*.json",
    "/run/user/*/jupyter/jpserver-*.json",
)


@dataclass(frozen=True)
class Reading:
    signal: str  # jupyter, gpu, ssh, sync, metadata
    state: str  # IDLE, BUSY or UNKNOWN
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.signal}={self.state}" + (f" ({self.detail})" if self.detail else "")


# --- Jupyter -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JupyterEndpoint:
    url: str  # http://127.0.0.1:8888/
    token: str


def discover_jupyter(patterns: Sequence[str] = JUPYTER_RUNTIME_GLOBS) -> JupyterEndpoint | None:
    """The newest running server's url and token from its runtime file (jupyter writes them 0600;
    the agent runs as root). None when no live server has written one."""
    candidates = []
    for pattern in patterns:
        for path in glob.glob(pattern):
            try:
                with open(path) as f:
                    info = json.load(f)
                candidates.append((os.path.getmtime(path), info))
            except (OSError, ValueError):
                continue
    for _, info in sorted(candidates, key=lambda c: c[0], reverse=True):
        pid = info.get("pid")
        if isinstance(pid, int) and not pid_alive(pid):
            continue  # stale file from a server that died
        url = info.get("url") or f"http://127.0.0.1:{info.get('port', 8888)}/"
        return JupyterEndpoint(url, info.get("token", ""))
    return None


class JupyterSignal:
    name = "jupyter"

    def __init__(self, locate: Callable[[], JupyterEndpoint | None], timeout: float = HTTP_TIMEOUT):
        self.locate = locate
        self.timeout = timeout
        self._seen: dict[str, str] = {}

    def _get(self, endpoint: JupyterEndpoint, path: str) -> list:
        req = urllib.request.Request(endpoint.url.rstrip("/") + path)
        if endpoint.token:
            req.add_header("Authorization", f"token {endpoint.token}")
        with urllib.request.urlopen(req, timeout=self.timeout) as r:
            data = json.loads(r.read() or b"[]")
        if not isinstance(data, list):
            raise ValueError(f"{path} did not return a list")
        return data

    def read(self) -> Reading:
        endpoint = self.locate()
        if endpoint is None:
            self._seen = {}
            return Reading(self.name, UNKNOWN, "no Jupyter server found")
        try:
            kernels = self._get(endpoint, "/api/kernels")
            try:
                terminals = self._get(endpoint, "/api/terminals")
            except urllib.error.HTTPError as e:
                if e.code != 404:  # 404: terminals disabled on this server, so none can be open
                    raise
                terminals = []
        except (OSError, ValueError) as e:  # URLError/HTTPError/timeouts are OSErrors
            self._seen = {}  # after a gap in what we saw, everything counts as new again
            return Reading(self.name, UNKNOWN, f"Jupyter API unreadable: {_short(e)}")

        snapshot: dict[str, str] = {}
        busy: list[str] = []
        for k in kernels:
            key = f"kernel {str(k.get('id', '?'))[:8]}"
            snapshot[key] = str(k.get("last_activity"))
            state = k.get("execution_state")
            # "starting" stays put until a client connects (jupyter_server 2.x only learns the
            # state from iopub messages): a kernel nobody opened is not running code. Its
            # appearance still counts as activity below.
            if state not in ("idle", "dead", "starting"):
                busy.append(f"{key} {state}")
        for t in terminals:
            snapshot[f"terminal {t.get('name', '?')}"] = str(t.get("last_activity"))
        active = [f"{key} active" for key, seen in snapshot.items() if self._seen.get(key) != seen]
        self._seen = snapshot
        if busy or active:
            return Reading(self.name, BUSY, ", ".join(busy + active))
        return Reading(self.name, IDLE, f"{len(kernels)} kernels, {len(terminals)} terminals quiet")


# --- GPU -----------------------------------------------------------------------------------------
GpuReader = Callable[[], "list[float] | None"]


def nvml_reader() -> list[float] | None:
    """Utilisation (percent) of every GPU through NVML (nvidia-ml-py); raises ImportError when
    the module is missing and pynvml.NVMLError when the driver is not loaded."""
    import pynvml  # type: ignore[import-not-found]

    pynvml.nvmlInit()
    try:
        count = pynvml.nvmlDeviceGetCount()
        return [float(pynvml.nvmlDeviceGetUtilizationRates(pynvml.nvmlDeviceGetHandleByIndex(i)).gpu) for i in range(count)]
    finally:
        pynvml.nvmlShutdown()


def nvidia_smi_reader(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> list[float] | None:
    """The same through nvidia-smi (what the VM's system python3 has). None when it is absent."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    out = run(
        [exe, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, timeout=HTTP_TIMEOUT, check=True,
    ).stdout
    return parse_nvidia_smi(out)


def parse_nvidia_smi(text: str) -> list[float]:
    values = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            values.append(float(line))  # "[N/A]" raises ValueError: unknown, on purpose
    return values


def default_gpu_reader() -> list[float] | None:
    """NVML when importable, else nvidia-smi, else None (no GPU visible)."""
    try:
        return nvml_reader()
    except ImportError:
        return nvidia_smi_reader()


class GpuSignal:
    name = "gpu"

    def __init__(self, reader: GpuReader = default_gpu_reader, expected: bool = True, threshold: float = GPU_THRESHOLD):
        self.reader = reader
        self.expected = expected
        self.threshold = threshold

    def read(self) -> Reading:
        try:
            values = self.reader()
        except Exception as e:  # NVMLError, CalledProcessError, parse errors: all unknown
            return Reading(self.name, UNKNOWN, f"GPU unreadable: {_short(e)}")
        if not values:
            if self.expected:
                return Reading(self.name, UNKNOWN, "no GPU visible but this VM has one")
            return Reading(self.name, IDLE, "no GPU")
        peak = max(values)
        state = BUSY if peak >= self.threshold else IDLE
        return Reading(self.name, state, "utilisation " + "/".join(f"{v:g}%" for v in values))


# --- processes: SSH sessions and sync ------------------------------------------------------------
@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    args: str


ProcTable = Callable[[], "list[Proc]"]


def proc_table(root: str = "/proc") -> list[Proc]:
    """Every process's pid, parent and command line (the title sshd sets shows in cmdline)."""
    procs = []
    for entry in os.listdir(root):
        if not entry.isdigit():
            continue
        try:
            with open(f"{root}/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"{root}/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # exited while we looked
        # the comm field is in parentheses and may contain spaces: ppid follows the last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        procs.append(Proc(int(entry), ppid, cmdline))
    return procs


def parse_ps(text: str) -> list[Proc]:
    """Output of ``ps -eo pid,ppid,args`` (what the tests feed as fixtures)."""
    procs = []
    for line in text.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].isdigit():
            continue  # header
        procs.append(Proc(int(parts[0]), int(parts[1]), parts[2] if len(parts) > 2 else ""))
    return procs


def ssh_sessions(procs: Iterable[Proc]) -> list[str]:
    """Descriptions of the SSH sessions that count as someone at work (see module docstring)."""
    procs = list(procs)
    parents = {p.ppid for p in procs}
    found = []
    for p in procs:
        title = p.args.strip()
        if not title.startswith(("sshd:", "sshd-session:")) or "@" not in title:
            continue  # the listener, [priv]/[net] monitors
        who, _, tty = title.split(":", 1)[1].strip().partition("@")
        tty = tty.split()[0] if tty.split() else ""
        if tty.startswith(("pts/", "tty")):
            found.append(f"{who} on {tty}")
        elif p.pid in parents:
            found.append(f"{who} running a command")
    return found


class SshSignal:
    name = "ssh"

    def __init__(self, table: ProcTable = proc_table):
        self.table = table

    def read(self) -> Reading:
        try:
            sessions = ssh_sessions(self.table())
        except (OSError, ValueError, IndexError) as e:
            return Reading(self.name, UNKNOWN, f"process table unreadable: {_short(e)}")
        if sessions:
            return Reading(self.name, BUSY, ", ".join(sessions))
        return Reading(self.name, IDLE, "no interactive session")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def is_sync_command(args: str) -> bool:
    tokens = args.split()
    for i, tok in enumerate(tokens):
        if tok.startswith("gcpdl.sync"):
            return True
        if "gcpdl" in os.path.basename(tok) and "gcpdl.agent" not in tok and "sync" in tokens[i + 1:]:
            return True
    return False


@contextlib.contextmanager
def holding_sync_lock(path: str = SYNC_LOCK) -> Iterator[bool]:
    """For `gcpdl sync` on the VM: tell the agent a sync is running (yields whether the lock
    could be written; off the VM /run/gcpdl does not exist and this is a no-op). The file is
    removed on exit only while it still names this process."""
    pid = str(os.getpid())
    try:
        with open(path, "w") as f:
            f.write(pid + "\n")
        held = True
    except OSError:
        held = False
    try:
        yield held
    finally:
        if held:
            try:
                with open(path) as f:
                    mine = f.read().strip() == pid
                if mine:
                    os.unlink(path)
            except OSError:
                pass


class SyncSignal:
    name = "sync"

    def __init__(self, lock_path: str = SYNC_LOCK, table: ProcTable = proc_table, alive: Callable[[int], bool] = pid_alive):
        self.lock_path = lock_path
        self.table = table
        self.alive = alive

    def read(self) -> Reading:
        try:
            content = _read_pid_file(self.lock_path)
        except FileNotFoundError:
            content = None
        except OSError as e:
            return Reading(self.name, UNKNOWN, f"{self.lock_path} unreadable: {_short(e)}")
        if content is not None:
            if not content.isdigit():
                return Reading(self.name, UNKNOWN, f"{self.lock_path} does not hold a pid")
            if self.alive(int(content)):
                return Reading(self.name, BUSY, f"gcpdl sync running (pid {content})")
            # a stale lock from a sync that was killed: fall through to the process scan
        try:
            me = os.getpid()
            running = [p for p in self.table() if p.pid != me and is_sync_command(p.args)]
        except (OSError, ValueError, IndexError) as e:
            return Reading(self.name, UNKNOWN, f"process table unreadable: {_short(e)}")
        if running:
            return Reading(self.name, BUSY, f"gcpdl sync running (pid {running[0].pid})")
        return Reading(self.name, IDLE, "no sync")


def _read_pid_file(path: str) -> str:
    """The agent (root) reading a file the login user controls (/run/gcpdl is world-writable):
    never through a link, never a FIFO or device (open would block, or read for ever), and no
    more than a pid's worth."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise OSError("a link, not a regular file") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError("not a regular file")
        return os.read(fd, 64).decode("ascii", "replace").strip()
    finally:
        os.close(fd)


def _short(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text.splitlines()[0][:120]
