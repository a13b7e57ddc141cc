"""`systemctl` for the guest-VM namespace (tests/fixtures/guestvm.py), where systemd is not PID 1.

Only what the real guest agent and gcpdl's startup script call: ``list-units --all U``,
``list-unit-files U``, ``start``, ``restart``, ``try-restart``, ``reload-or-restart``, ``stop``,
``is-active``, ``enable [--now]``, ``disable``, ``mask``, ``daemon-reload``. A service is started
from its real unit file (/etc/systemd/system, /lib/systemd/system): ``EnvironmentFile`` (``-``
optional), ``Environment``, ``User``/``Group`` (with HOME, USER, LOGNAME, SHELL as systemd sets
them), ``WorkingDirectory`` (``~`` = the user's home), ``RuntimeDirectory``, ``ExecStartPre``,
``ExecStart`` (detached, output to $GUESTVM_LOG_DIR/UNIT.log), ``ExecReload`` with $MAINPID.
Not modelled: Restart=, dependencies, Type= (a service counts as started once forked).
``sshd.service`` is the alias of Debian's ``ssh.service``, as on the real system.
Stdlib only: it runs under the system python3 inside the namespace.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

UNIT_DIRS = [Path("/etc/systemd/system"), Path("/lib/systemd/system"), Path("/usr/lib/systemd/system")]
STATE = Path(os.environ.get("GUESTVM_UNIT_STATE", "/run/guestvm-units"))
LOGS = Path(os.environ.get("GUESTVM_LOG_DIR", "/run/guestvm-units"))
ALIASES = {"sshd.service": "ssh.service"}
# sshd logs to syslog, which the namespace has no daemon for: -e sends it to the unit log instead
EXTRA_ENV = {"ssh.service": {"SSHD_OPTS": "-e"}}


def _name(unit: str) -> str:
    unit = unit if "." in unit else unit + ".service"
    return ALIASES.get(unit, unit)


def _unit_file(unit: str) -> Path | None:
    for d in UNIT_DIRS:
        p = d / unit
        if p.is_file():
            return p
    return None


def _parse(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section != "Service" or "=" not in line:
            continue
        k, v = line.split("=", 1)
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def _pid(unit: str) -> int | None:
    try:
        pid = int((STATE / f"{unit}.pid").read_text())
    except (OSError, ValueError):
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return None if stat.rsplit(")", 1)[1].split()[0] == "Z" else pid


def _env(unit: str, conf: dict[str, list[str]]) -> tuple[dict[str, str], dict | None]:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    user = None
    if conf.get("User"):
        pw = pwd.getpwnam(conf["User"][-1])
        gid = grp.getgrnam(conf["Group"][-1]).gr_gid if conf.get("Group") else pw.pw_gid
        user = {"name": pw.pw_name, "uid": pw.pw_uid, "gid": gid, "home": pw.pw_dir}
        env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name, SHELL=pw.pw_shell)
    for spec in conf.get("EnvironmentFile", []):
        optional = spec.startswith("-")
        try:
            text = Path(spec.lstrip("-")).read_text()
        except OSError:
            if optional:
                continue
            raise SystemExit(f"Failed to load environment files for {unit}: {spec}")
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                k, v = line.split("=", 1)
                env[k.strip()] = v.strip().strip('"')
    for spec in conf.get("Environment", []):
        for item in shlex.split(spec):
            k, _, v = item.partition("=")
            env[k] = v
    for k, v in EXTRA_ENV.get(unit, {}).items():
        env.setdefault(k, v)
        if not env[k]:
            env[k] = v
    return env, user


def _argv(line: str, env: dict[str, str]) -> list[str]:
    line = line.lstrip("-@+!:")
    out = []
    for word in shlex.split(line):
        if word.startswith("$") and word[1:] in env:  # $VAR as its own word splits on spaces
            out += env[word[1:]].split()
        else:
            out.append(os.path.expandvars(word) if "$" in word else word)
    return out


def _preexec(user: dict | None):
    def fn() -> None:
        os.setsid()
        if user:
            os.initgroups(user["name"], user["gid"])
            os.setgid(user["gid"])
            os.setuid(user["uid"])

    return fn


def start(unit: str) -> int:
    if _pid(unit):
        return 0
    path = _unit_file(unit)
    if path is None:
        print(f"Failed to start {unit}: Unit {unit} not found.", file=sys.stderr)
        return 5
    conf = _parse(path)
    env, user = _env(unit, conf)
    for d in conf.get("RuntimeDirectory", []):
        for name in d.split():
            Path("/run", name).mkdir(mode=0o755, parents=True, exist_ok=True)
    cwd = None
    if conf.get("WorkingDirectory"):
        wd = conf["WorkingDirectory"][-1].lstrip("-")
        cwd = user["home"] if wd == "~" and user else wd
    STATE.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    log = open(LOGS / f"{unit}.log", "ab")
    for pre in conf.get("ExecStartPre", []):
        rc = subprocess.call(_argv(pre, env), env=env, cwd=cwd, stdout=log, stderr=log, preexec_fn=_preexec(user))
        if rc != 0 and not pre.startswith("-"):
            print(f"Job for {unit} failed (ExecStartPre exited {rc}).", file=sys.stderr)
            return 1
    proc = subprocess.Popen(
        _argv(conf["ExecStart"][-1], env), env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        preexec_fn=_preexec(user),
    )
    (STATE / f"{unit}.pid").write_text(str(proc.pid))
    return 0


def stop(unit: str) -> int:
    pid = _pid(unit)
    if pid:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        # as systemd does, return once the main process is gone (sshd must free its port)
        for _ in range(500):
            if not _pid(unit):
                break
            time.sleep(0.01)
    (STATE / f"{unit}.pid").unlink(missing_ok=True)
    return 0


def reload(unit: str) -> int:
    pid = _pid(unit)
    path = _unit_file(unit)
    if not pid or path is None:
        return start(unit)
    conf = _parse(path)
    if not conf.get("ExecReload"):
        stop(unit)
        return start(unit)
    env, _ = _env(unit, conf)
    env["MAINPID"] = str(pid)
    for line in conf["ExecReload"]:
        rc = subprocess.call(_argv(line, env), env=env)
        if rc != 0 and not line.startswith("-"):
            return 1
    return 0


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("-")]
    flags = [a for a in argv if a.startswith("-")]
    if not args:
        return 0
    verb, units = args[0], [_name(u) for u in args[1:]]
    rc = 0
    if verb == "list-units":
        found = [u for u in units if _unit_file(u)]
        for u in found:
            state = "active running" if _pid(u) else "inactive dead"
            print(f"  {u} loaded {state} {u}")
        print(f"\n{len(found)} loaded units listed.")
    elif verb == "list-unit-files":
        found = [u for u in units if _unit_file(u)]
        for u in found:
            print(f"{u} enabled enabled")
        print(f"\n{len(found)} unit files listed.")
    elif verb in ("daemon-reload", "mask", "unmask", "disable"):
        if verb == "disable" and "--now" in flags:
            for u in units:
                stop(u)
    elif verb == "enable":
        if "--now" in flags:
            for u in units:
                rc = rc or start(u)
    elif verb == "start":
        for u in units:
            rc = rc or start(u)
    elif verb == "stop":
        for u in units:
            stop(u)
    elif verb == "restart":
        for u in units:
            stop(u)
            rc = rc or start(u)
    elif verb == "try-restart":
        for u in units:
            if _pid(u):
                stop(u)
                rc = rc or start(u)
    elif verb in ("reload-or-restart", "reload"):
        for u in units:
            rc = rc or reload(u)
    elif verb == "is-active":
        active = all(_pid(u) for u in units)
        print("active" if active else "inactive")
        rc = 0 if active else 3
    else:
        print(f"systemctl stand-in: '{verb}' is not modelled", file=sys.stderr)
        rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
