"""Run the sync engine on the VM: the data goes bucket -> VM disk, never through this machine.

gcpdl ships itself: the running package is zipped into a pure-Python wheel (built in-process, named
by a hash of its contents, so an unchanged gcpdl is uploaded once), copied over SFTP to
~/.gcpdl/wheels/ and imported straight from the wheel (zipimport) by the Python of a venv at
~/.gcpdl/venv that holds the engine's dependencies. The venv is made once, with
--system-site-packages so a Deep Learning VM's preinstalled libraries are reused, and pip fills in
what is missing. The engine there runs `gcpdl sync --local --json` with the VM's service-account
credentials (ADC from the metadata server; `up` grants a read-only storage scope); its progress
lines come back on stderr as they are printed, and its JSON summary on stdout.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shlex
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from gcpdl.errors import InvalidInput, SyncError

REMOTE_HOME = ".gcpdl"  # under the VM user's home
VM_DATA_ROOT = "/data"  # where `up` mounts the data disk
# Only what `gcpdl sync` imports on the VM (not compute or paramiko).
REMOTE_DEPS = [
    "google-cloud-storage>=2.14",
    "google-crc32c>=1.5",
    "google-auth>=2.20",
    "requests>=2.31",
    "click>=8.1",
    "rich>=13",
    "platformdirs>=3",
    "tomli>=2; python_version < '3.11'",
]
PROBE = "import google.cloud.storage, google_crc32c, click, rich, platformdirs"
BOOTSTRAP_TIMEOUT = 600.0  # a first pip install on a fresh VM


def _package_files() -> list[tuple[str, bytes]]:
    import gcpdl
    from gcpdl.render import templates_dir

    root = Path(gcpdl.__file__).resolve().parent
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo"):
            out.append((f"gcpdl/{p.relative_to(root).as_posix()}", p.read_bytes()))
    tdir = templates_dir()
    if not (root / "templates").is_dir() and tdir.is_dir():  # a source checkout: ship them too
        for p in sorted(tdir.rglob("*")):
            if p.is_file():
                out.append((f"gcpdl/templates/{p.relative_to(tdir).as_posix()}", p.read_bytes()))
    return out


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel() -> tuple[str, bytes]:
    """(filename, bytes) of a py3-none-any wheel of the running gcpdl; deterministic."""
    from gcpdl import __version__

    files = _package_files()
    h = hashlib.sha256()
    for name, data in files:
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    tag = h.hexdigest()[:12]
    version = f"{__version__}+g{tag}"
    dist = f"gcpdl-{version}.dist-info"
    meta = "Metadata-Version: 2.1\nName: gcpdl\nVersion: {}\n{}".format(
        version, "".join(f"Requires-Dist: {d}\n" for d in REMOTE_DEPS)
    ).encode()
    wheel = b"Wheel-Version: 1.0\nGenerator: gcpdl\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files += [(f"{dist}/METADATA", meta), (f"{dist}/WHEEL", wheel)]
    record = "".join(f"{n},{_record_hash(d)},{len(d)}\n" for n, d in files) + f"{dist}/RECORD,,\n"
    files.append((f"{dist}/RECORD", record.encode()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))  # same bytes every build
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return f"gcpdl-{version}-py3-none-any.whl", buf.getvalue()


@dataclass
class RemoteResult:
    exit_code: int
    summary: dict[str, Any] | None
    error: str | None  # the remote `Error:` line, without the prefix


def default_dest(prefix: str, bucket: str) -> str:
    name = prefix.rstrip("/").rsplit("/", 1)[-1] or bucket
    return f"{VM_DATA_ROOT}/{name}"


def pick_vm(running: list[str]) -> str:
    """The VM to sync onto when none was named: the only running gcpdl VM."""
    if len(running) == 1:
        return running[0]
    if not running:
        raise InvalidInput(
            "No gcpdl VM is running to sync onto.", fix="Start one (gcpdl up NAME), or pass --local to sync onto this machine."
        )
    raise InvalidInput(
        f"Several gcpdl VMs are running ({', '.join(sorted(running))}).", fix="Pick one with --on NAME, or pass --local."
    )


PID_PREFIX = "@gcpdl-pid "  # the first stderr line of the remote engine: its process id
STOP_WAIT = 15.0  # seconds the engine on the VM gets to stop after SIGINT (in-flight parts are kept)


class RemoteInterrupted(KeyboardInterrupt):
    """Ctrl-C here while the engine ran on the VM; ``stopped`` says whether it stopped there."""

    def __init__(self, vm: str, stopped: bool, pid: int | None, following: int | None = None):
        super().__init__(vm)
        self.vm, self.stopped, self.pid = vm, stopped, pid
        self.following = following  # the pid of the sync the stopped one only followed (it goes on)


class _Lines:
    """Split a byte stream into lines for a callback; progress records and the engine's pid are
    taken out of the stream."""

    def __init__(self, emit: Callable[[str], None], on_progress: Callable[[Any], None] | None = None):
        self.emit = emit
        self.on_progress = on_progress
        self.buf = b""
        self.last_error: str | None = None
        self.pid: int | None = None
        self.following: int | None = None

    def feed(self, data: bytes) -> None:
        self.buf += data
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            self._line(line.decode(errors="replace").rstrip("\r"))

    def _line(self, text: str) -> None:
        from gcpdl.sync.progress import ATTACHED_PREFIX, RECORD_PREFIX, from_record

        if text.startswith(PID_PREFIX) and self.pid is None:
            self.pid = int(text[len(PID_PREFIX):]) if text[len(PID_PREFIX):].isdigit() else None
            return
        if text.startswith(ATTACHED_PREFIX):
            rest = text[len(ATTACHED_PREFIX):]
            self.following = int(rest) if rest.isdigit() else None
            return
        if text.startswith(RECORD_PREFIX):
            p = from_record(text)
            if p is not None and self.on_progress is not None:
                self.on_progress(p)
            return
        if text.startswith("Error: "):
            self.last_error = text[len("Error: ") :]
            return
        self.emit(text)

    def close(self) -> None:
        if self.buf:
            self._line(self.buf.decode(errors="replace"))
            self.buf = b""


def _same_file(sftp: Any, path: str, data: bytes) -> bool:
    """Whether ``path`` on the VM holds exactly ``data``: the SHA-256 of its bytes, not its size
    (a partial upload padded to size, or another file of that name, must not be imported).
    Reading the wheel back costs about what uploading it does, and only the bytes decide."""
    try:
        if sftp.stat(path).st_size != len(data):
            return False
        with sftp.open(path, "rb") as f:
            f.prefetch(len(data))
            got = hashlib.sha256(f.read(len(data) + 1)).digest()
    except (FileNotFoundError, IOError):
        return False
    return got == hashlib.sha256(data).digest()


def ensure_gcpdl(session: Any, report: Callable[[str], None], python: str | None = None) -> str:
    """Upload the wheel if the VM lacks it and make the venv; return the command prefix that runs
    gcpdl there (``PYTHONPATH=WHEEL PY -m gcpdl``)."""
    name, data = build_wheel()
    sftp = session.transport.open_sftp_client()
    try:
        # GCPDL_REMOTE_DIR moves gcpdl's folder on the VM (tests keep it inside their tmp dir)
        base = os.environ.get("GCPDL_REMOTE_DIR") or f"{sftp.normalize('.')}/{REMOTE_HOME}"
        wheels = f"{base}/wheels"
        for d in (base, wheels):
            try:
                sftp.stat(d)
            except FileNotFoundError:
                sftp.mkdir(d, 0o700)
        path = f"{wheels}/{name}"
        if not _same_file(sftp, path, data):
            report(f"Shipping gcpdl to the VM ({len(data) // 1024} KB)...")
            tmp = path + ".tmp"
            with sftp.open(tmp, "wb") as f:
                f.write(data)
            sftp.posix_rename(tmp, path)
    finally:
        sftp.close()
    if python:  # a Python that already has the dependencies (tests, or a user's own env)
        py = python
    else:
        venv = f"{base}/venv"
        deps = " ".join(shlex.quote(d) for d in REMOTE_DEPS)
        script = (
            f"set -e; V={shlex.quote(venv)}; "
            f'if [ ! -x "$V/bin/python" ]; then python3 -m venv --system-site-packages "$V"; fi; '
            f'if ! "$V/bin/python" -c {shlex.quote(PROBE)} 2>/dev/null; then '
            f'echo "Installing the sync engine\'s dependencies on the VM (once)..." >&2; '
            f'"$V/bin/python" -m pip install -q --disable-pip-version-check {deps} >&2; fi'
        )
        lines = _Lines(report)
        r = session.run(f"bash -c {shlex.quote(script)}", timeout=BOOTSTRAP_TIMEOUT, stderr=lines.feed)
        lines.close()
        if r.exit_code != 0:
            raise SyncError(
                f"Could not prepare Python on the VM (exit {r.exit_code}).",
                fix=f"Check the VM has python3 with venv and pip, and internet access: gcpdl ssh {session.target.name}",
            )
        py = f"{venv}/bin/python"
    return f"PYTHONPATH={shlex.quote(path)} {shlex.quote(py)} -m gcpdl"


def run_remote(session: Any, args: list[str], env: dict[str, str], report: Callable[[str], None], python: str | None = None,
               on_progress: Callable[[Any], None] | None = None) -> RemoteResult:
    """Run `gcpdl sync ARGS --local --json` on the VM, streaming its stderr lines to ``report``
    and, with ``on_progress``, its progress as gcpdl.sync.progress.Progress values.

    A Ctrl-C here stops the engine there too (SIGINT to its pid, which it reports first, so it
    exits as a local Ctrl-C would: finished files and the state kept) and raises
    RemoteInterrupted saying whether it stopped."""
    from gcpdl.sync.progress import RECORD_ENV

    prefix = ensure_gcpdl(session, report, python)
    if on_progress is not None:
        env = {**env, RECORD_ENV: "1"}
    env_part = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    # `exec env ...` keeps the shell's pid for the engine, so the pid it prints is the one to signal
    cmd = f"echo {PID_PREFIX}$$ >&2; exec env {env_part} {prefix} sync {' '.join(shlex.quote(a) for a in args)} --local --json"
    lines = _Lines(report, on_progress)
    out: list[bytes] = []
    try:
        r = session.run(cmd, timeout=None, stdout=out.append, stderr=lines.feed)
    except KeyboardInterrupt:
        raise RemoteInterrupted(session.target.name, stop_remote(session, lines.pid), lines.pid, lines.following) from None
    lines.close()
    text = b"".join(out).decode(errors="replace").strip()
    summary = None
    if text:
        try:
            summary = json.loads(text)
        except ValueError:
            summary = None
    error = lines.last_error
    if r.exit_code != 0 and error is None:
        error = f"gcpdl sync on the VM exited with {r.exit_code}" + (f": {text[:200]}" if text and summary is None else ".")
    return RemoteResult(r.exit_code, summary, error)


def stop_remote(session: Any, pid: int | None) -> bool:
    """SIGINT the engine on the VM and wait (bounded) until it is gone; True when it is."""
    if pid is None:
        return False
    polls = int(STOP_WAIT / 0.1)
    script = (f"kill -INT {pid} 2>/dev/null; i=0; while kill -0 {pid} 2>/dev/null; do "
              f"i=$((i+1)); [ $i -ge {polls} ] && exit 1; sleep 0.1; done; exit 0")
    try:
        return session.run(f"sh -c {shlex.quote(script)}", timeout=STOP_WAIT + 10).exit_code == 0
    except Exception:  # the connection itself is gone: we cannot tell
        return False


def forwarded_env() -> dict[str, str]:
    """Settings the engine on the VM should see too: a storage endpoint chosen on purpose
    (Private Service Connect, or a test's stand-in)."""
    out = {}
    for k in ("GCPDL_STORAGE_ENDPOINT", "STORAGE_EMULATOR_HOST"):
        if os.environ.get(k):
            out[k] = os.environ[k]
    return out
