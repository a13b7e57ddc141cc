"""PID 1 of the guest-VM namespace (started by tests/fixtures/guestvm.py, never run by hand).

    unshare --net --mount --pid --uts --ipc --fork --mount-proc -- python -m tests.fakes.guest_init BASE

BASE is a host directory (the fixture's); inside the namespace it is bind-mounted at
/run/guestvm, and everything the host needs to see lands there: metadata.sock (the metadata
stand-in with its test-control API), ssh.sock (a relay to the namespace's sshd on 127.0.0.1:22),
logs/, status.json. It boots like a GCE VM whose units are ordered as Debian's packages order them:

1. its own root: an overlay of the host's / (upper layer BASE/upper/root) with tmpfs /home,
   /run, /tmp, then pivot_root; /sys/block hidden (the agent writes IO schedulers there) and
   /proc/sys read-only (it runs sysctl), so nothing on the host can change;
2. the network: lo up, 169.254.169.254/32 on lo, /etc/hosts maps metadata.google.internal to it;
3. the metadata stand-in (tests/fakes/metadata_server.py) on 169.254.169.254:80, state from
   BASE/spec.json;
4. google_guest_agent (Type=notify: READY=1 arrives on NOTIFY_SOCKET once its first-boot setup,
   host keys included, is done), then ssh.service (the agent's unit says Before=sshd.service),
   then `google_metadata_script_runner startup` (After=google-guest-agent.service), as systemd
   orders them. `systemctl` is tests/fakes/systemctl_standin.py (systemd is not PID 1 here).

PID 1 only reaps; a forked child does the work. BASE/spec.json may set "agent_prefix" (e.g.
["strace", "-f", "-o", "/run/guestvm/agent.strace"]) to look at what the agent does. The fixture ends everything by SIGKILL to this
PID 1, which takes the whole PID namespace (and with it the mount and network namespaces) along.
"""

from __future__ import annotations

import array
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.fakes.metadata_server import MetadataState, serve

HERE = Path(__file__).resolve().parent
RUN = Path("/run/guestvm")
GUEST_PATH = f"{RUN}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
METADATA_IP = "169.254.169.254"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {res.returncode}: {res.stdout.strip()}")
    return res


class Status:
    """BASE/status.json, rewritten atomically at each boot step, for the host to poll."""

    def __init__(self) -> None:
        self.data: dict = {"started": time.time()}
        self.lock = threading.Lock()

    def set(self, **kv: object) -> None:
        with self.lock:
            self.data.update(kv)
            tmp = RUN / "status.json.tmp"
            tmp.write_text(json.dumps(self.data))
            os.replace(tmp, RUN / "status.json")


def mount_all(base: Path) -> None:
    """Give the guest its own root: an overlay of the host's / (writes land in
    BASE/upper/root, so a test can also read them from the host), fresh /proc, tmpfs /run, /tmp,
    /home and /dev/shm, then pivot_root into it. The host's filesystem is never written."""
    sh("mount", "--make-rprivate", "/")
    root, upper, work = base / "root", base / "upper" / "root", base / "work" / "root"
    for d in (root, upper, work, base / "venv"):
        d.mkdir(parents=True, exist_ok=True)
    sh("mount", "-t", "overlay", "overlay", "-o", f"lowerdir=/,upperdir={upper},workdir={work}", str(root))
    sh("mount", "-t", "proc", "proc", f"{root}/proc")
    sh("mount", "--rbind", "/sys", f"{root}/sys")
    sh("mount", "--rbind", "/dev", f"{root}/dev")
    sh("mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", f"{root}/dev/shm")
    sh("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", f"{root}/run")
    sh("mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", f"{root}/tmp")
    sh("mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", f"{root}/home")
    (root / RUN.relative_to("/")).mkdir()
    sh("mount", "--bind", str(base), f"{root}{RUN}")
    # the test venv (the Jupyter stand-in runs from it), wherever the checkout lives
    sh("mount", "--bind", "-o", "ro", sys.prefix, f"{root}{RUN}/venv")
    (root / "oldroot").mkdir(exist_ok=True)
    os.chdir(root)
    sh("pivot_root", ".", "oldroot")
    os.chdir("/")
    sh("umount", "-l", "/oldroot")
    os.rmdir("/oldroot")
    # the agent sets IO schedulers under /sys/block and runs sysctl: kernel-wide, so hidden
    sh("mount", "-t", "tmpfs", "-o", "ro,mode=755", "tmpfs", "/sys/block")
    sh("mount", "--bind", "/proc/sys", "/proc/sys")
    sh("mount", "-o", "remount,bind,ro", "/proc/sys")


def prepare_image(spec: dict) -> None:
    """Make the overlay look like a fresh VM's disk, first boot."""
    hosts = Path("/etc/hosts")
    hosts.write_text(hosts.read_text() + f"\n{METADATA_IP} metadata.google.internal metadata  # GCE metadata\n")
    hostname = spec["hostname"]
    Path("/etc/hostname").write_text(hostname + "\n")
    sh("hostname", hostname)
    for path in ("/etc/google_instance_id", "/etc/boto.cfg", "/etc/sudoers.d/google_sudoers",
                 "/etc/sudoers.d/google-oslogin", "/etc/oslogin_passwd.cache", "/etc/oslogin_group.cache"):
        Path(path).unlink(missing_ok=True)
    shutil.rmtree("/var/lib/google", ignore_errors=True)
    # the GCE Debian images ship sudo; the agent writes /etc/sudoers.d/google_sudoers
    Path("/etc/sudoers.d").mkdir(mode=0o755, exist_ok=True)
    # bin/: systemctl (systemd is not PID 1 here) and a useradd/groupadd that log who called them
    bin_dir = RUN / "bin"
    bin_dir.mkdir(exist_ok=True)
    (RUN / "systemctl_standin.py").write_text(spec["_systemctl_source"])
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\nexec /usr/bin/python3 -s {RUN}/systemctl_standin.py "$@"\n')
    for tool in ("useradd", "groupadd"):
        # one line per call: start, end, caller, exit code, arguments
        (bin_dir / tool).write_text(
            "#!/bin/sh\n"
            "# logs the caller, then runs the real tool unchanged\n"
            'start=$(date +%s.%N); caller=$(cat /proc/$PPID/comm 2>/dev/null || echo "?")\n'
            f'/usr/sbin/{tool} "$@"; rc=$?\n'
            f'printf "%s\\t%s\\t%s\\t%s\\t%s\\n" "$start" "$(date +%s.%N)" "$caller" "$rc" "$*" >>{RUN}/logs/{tool}.log\n'
            "exit $rc\n"
        )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    if spec.get("image_jupyter"):
        # Deep Learning VM images ship JupyterLab at /opt/conda/bin/jupyter. Offline, the
        # stand-in is the test venv's jupyter_server (JupyterLab is a server extension of it;
        # /api, tokens and the CLI options gcpdl's unit passes are jupyter_server's).
        conda = Path("/opt/conda/bin")
        conda.mkdir(parents=True, exist_ok=True)
        # The venv's interpreter may live where the login user cannot reach it (a pyenv build
        # under /root): the system python3 of the same version runs the venv's packages.
        ours = "%d.%d" % sys.version_info[:2]
        system = sh("/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])", check=False)
        site = RUN / "venv" / "lib" / f"python{ours}" / "site-packages"
        if system.stdout.strip() == ours:
            py = f"env PYTHONPATH={site} /usr/bin/python3 -s"
        else:
            py = str(RUN / "venv" / "bin" / "python")
        (conda / "jupyter").write_text(
            "#!/bin/sh\n# stand-in for a DLVM image's JupyterLab (tests/fakes/guest_init.py)\n"
            'if [ "$1" = lab ]; then\n  shift\n'
            '  if [ "$1" = --version ]; then echo "4.2.0 (jupyter_server stand-in)"; exit 0; fi\n'
            f'  exec {py} -m jupyter_server "$@"\nfi\n'
            f'exec {py} -m jupyter "$@"\n'
        )
        (conda / "jupyter").chmod(0o755)


def network(spec: dict) -> None:
    sh("ip", "link", "set", "lo", "up")
    sh("ip", "addr", "add", f"{METADATA_IP}/32", "dev", "lo")
    # the VM's NIC, with the MAC the metadata names, when the kernel has dummy links
    nic = spec.get("nic")
    if nic and sh("ip", "link", "add", "eth0", "type", "dummy", check=False).returncode == 0:
        sh("ip", "link", "set", "eth0", "address", nic["mac"], check=False)
        sh("ip", "addr", "add", f"{nic['ip']}/32", "dev", "eth0", check=False)
        sh("ip", "link", "set", "eth0", "up", check=False)


def serve_relay(listener: socket.socket, connect) -> None:
    """Accept on ``listener`` (a daemon thread) and pipe each connection to ``connect()``'s socket.
    Used on both sides: ssh.sock -> 127.0.0.1:22 in here, and a host TCP port -> ssh.sock."""

    def pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def handle(client: socket.socket) -> None:
        try:
            upstream = connect()
        except OSError:
            client.close()
            return
        t = threading.Thread(target=pipe, args=(upstream, client), daemon=True)
        t.start()
        pipe(client, upstream)
        t.join()
        client.close()
        upstream.close()

    def accept() -> None:
        while True:
            try:
                c, _ = listener.accept()
            except OSError:  # closed: the relay is over
                return
            threading.Thread(target=handle, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


def relay_ssh(path: Path, port: int = 22) -> None:
    """ssh.sock (reachable from the host's filesystem) -> 127.0.0.1:22 in this namespace."""
    path.unlink(missing_ok=True)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(64)
    serve_relay(srv, lambda: socket.create_connection(("127.0.0.1", port), timeout=10))


def guest_env(**extra: str) -> dict[str, str]:
    env = {"PATH": GUEST_PATH, "LANG": "C.UTF-8", "HOME": "/root",
           "GUESTVM_LOG_DIR": str(RUN / "logs"), "GUESTVM_UNIT_STATE": "/run/guestvm-units"}
    env.update(extra)
    return env


def boot(base: Path, spec: dict) -> None:
    (RUN / "logs").mkdir(exist_ok=True)
    status = Status()
    prepare_image(spec)
    network(spec)

    state = MetadataState()
    state.merge(spec["metadata"])
    serve(state, (METADATA_IP, 80), str(RUN / "metadata.sock"))
    relay_ssh(RUN / "ssh.sock")
    status.set(metadata=time.time())

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = RUN / "notify.sock"
    notify_path.unlink(missing_ok=True)
    notify.bind(str(notify_path))
    agent_log = open(RUN / "logs" / "agent.log", "ab")
    agent = subprocess.Popen(
        spec.get("agent_prefix", []) + ["/usr/bin/google_guest_agent"], stdin=subprocess.DEVNULL, stdout=agent_log, stderr=agent_log,
        env=guest_env(NOTIFY_SOCKET=str(notify_path), GUEST_AGENT_DEBUG="1"), cwd="/",
    )
    status.set(agent_pid_in_ns=agent.pid)
    ready = threading.Event()

    def notifications() -> None:
        # as systemd does: read every message, and close the fds that systemd-notify passes
        # (after READY=1 it sends BARRIER=1 with a pipe and waits up to 5 s for it to close)
        while True:
            msg, anc, _, _ = notify.recvmsg(4096, socket.CMSG_SPACE(16 * 4))
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    for fd in array.array("i", data[: len(data) - len(data) % 4]):
                        os.close(fd)
            if "READY=1" in msg.decode(errors="replace").split("\n"):
                ready.set()

    threading.Thread(target=notifications, daemon=True).start()
    ready.wait()
    status.set(agent_ready=time.time())

    # Before=sshd.service: sshd starts with the host keys the agent just generated
    ssh = subprocess.run(["systemctl", "start", "ssh.service"], env=guest_env(), capture_output=True, text=True)
    status.set(sshd=time.time(), sshd_rc=ssh.returncode, sshd_err=ssh.stderr.strip())

    if spec.get("run_startup_scripts", True):
        # google-startup-scripts.service: After=google-guest-agent.service, i.e. after READY=1
        with open(RUN / "logs" / "startup-boot.log", "ab") as log:
            rc = subprocess.call(["google_metadata_script_runner", "startup"], stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=log, env=guest_env(), cwd="/")
        status.set(startup_rc=rc, startup_done=time.time())
    status.set(booted=time.time())
    threading.Event().wait()


def reap_forever(child: int) -> None:
    while True:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            os._exit(0)
        except InterruptedError:
            continue
        if pid == child:
            os._exit(os.waitstatus_to_exitcode(code) & 0xFF)


def main() -> None:
    base = Path(sys.argv[1])
    try:
        spec = json.loads((base / "spec.json").read_text())
        # read now: the mounts below may hide the checkout (a clone under /home or /tmp)
        spec["_systemctl_source"] = (HERE / "systemctl_standin.py").read_text()
        # before the fork, so that PID 1's root and cwd are the guest's (nsenter -r -w uses them)
        mount_all(base)
    except BaseException as e:
        (base / "boot-error.txt").write_text(f"{type(e).__name__}: {e}\n")
        raise
    if os.getpid() == 1:
        child = os.fork()
        if child:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: os.kill(-1, signal.SIGKILL))
            reap_forever(child)
    try:
        boot(base, spec)
    except BaseException as e:  # the host reads this instead of waiting to its deadline
        for d in (RUN, base):
            try:
                (d / "boot-error.txt").write_text(f"{type(e).__name__}: {e}\n")
                break
            except OSError:
                continue
        raise


if __name__ == "__main__":
    main()
