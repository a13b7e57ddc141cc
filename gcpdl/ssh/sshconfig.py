"""The gcpdl-managed ssh config file, included from ~/.ssh/config.

gcpdl owns one file (~/.ssh/gcpdl_config) with one Host block per VM, so `ssh box`, `scp`,
`rsync -e ssh` and VS Code Remote-SSH work with no further set-up. The user's own
~/.ssh/config is touched once: an Include line is added at the top (an Include placed after a
Host block would only apply inside that block). Their lines are never rewritten.

`up`, `start` and `status` call ``refresh_vm`` (one lean REST read: IP, instance id and the
host keys from guest attributes) or, with data already in hand, ``refresh_host``; the ephemeral
IP changes on stop/start. `down` calls ``remove_host``.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from gcpdl.errors import InvalidInput
from gcpdl.ssh.hostkeys import HostKey, host_alias, known_hosts_path, store
from gcpdl.ssh.target import resolve_target, validate_name

MANAGED_NAME = "gcpdl_config"
HEADER = (
    "# Managed by gcpdl: `gcpdl up/start/status` refresh these blocks and `gcpdl down` removes them.\n"
    "# Edits here are overwritten; put your own settings in ~/.ssh/config.\n"
)
INCLUDE_COMMENT = "# Added by gcpdl: SSH entries for your gcpdl VMs (ssh NAME, scp, VS Code Remote-SSH)."


def ssh_dir() -> Path:
    return Path.home() / ".ssh"


def user_config_path() -> Path:
    return ssh_dir() / "config"


def managed_path() -> Path:
    return ssh_dir() / MANAGED_NAME


def _q(path: Path | str) -> str:
    """Quote a path for ssh_config (macOS state dirs contain spaces)."""
    return '"' + str(path).replace('"', '\\"') + '"'


@dataclass(frozen=True)
class HostEntry:
    name: str
    host: str
    instance_id: str
    user: str = "gcpdl"
    port: int = 22
    identity_file: Path | None = None
    known_hosts: Path | None = None

    def block(self) -> str:
        identity = self.identity_file
        if identity is None:
            from gcpdl.ssh.keys import KEY_NAME, key_dir

            identity = key_dir() / KEY_NAME
        lines = [
            f"Host {self.name}",
            f"    HostName {self.host}",
            f"    User {self.user}",
        ]
        if self.port != 22:
            lines.append(f"    Port {self.port}")
        lines += [
            f"    IdentityFile {_q(identity)}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {_q(self.known_hosts or known_hosts_path())}",
            f"    HostKeyAlias {host_alias(self.instance_id)}",
            # the keys come from the VM's guest attributes; never prompt, never accept a change
            "    StrictHostKeyChecking yes",
            "    ServerAliveInterval 30",
        ]
        return "\n".join(lines) + "\n"


def _parse_blocks(text: str) -> list[tuple[str, str]]:
    """(name, block text) for each Host block of the managed file; the header is dropped."""
    blocks: list[tuple[str, str]] = []
    current: list[str] | None = None
    name = ""
    for line in text.splitlines(keepends=True):
        if line.startswith("Host "):
            if current is not None:
                blocks.append((name, "".join(current).rstrip("\n") + "\n"))
            name = line.split(None, 1)[1].strip()
            current = [line]
        elif current is not None and line.strip():
            current.append(line)
    if current is not None:
        blocks.append((name, "".join(current).rstrip("\n") + "\n"))
    return blocks


def _write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".gcpdl-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def ensure_include() -> bool:
    """Add `Include <managed file>` at the top of ~/.ssh/config once. True if it was added."""
    config = user_config_path()
    managed = managed_path()
    try:
        original = config.read_text()
        mode = config.stat().st_mode & 0o777
    except FileNotFoundError:
        original, mode = "", 0o600
    for line in original.splitlines():
        words = line.strip().split(None, 1)
        if len(words) == 2 and words[0].lower() == "include" and MANAGED_NAME in words[1]:
            return False
    include = f"{INCLUDE_COMMENT}\nInclude {_q(managed)}\n"
    _write_atomic(config, include + ("\n" + original if original else ""), mode)
    return True


def _write_managed(blocks: list[tuple[str, str]]) -> None:
    text = HEADER + "".join("\n" + b for _, b in blocks)
    _write_atomic(managed_path(), text)


def refresh_host(
    name: str,
    ip: str,
    instance_id: str | int,
    user: str = "gcpdl",
    port: int = 22,
    identity_file: Path | None = None,
    known_hosts: Path | None = None,
    host_keys: Iterable[HostKey] = (),
) -> Path:
    """Write (or replace) the Host block for VM ``name`` and make sure ~/.ssh/config includes
    the managed file. ``host_keys`` (from the VM's guest attributes) are pinned for the
    instance, so `ssh NAME` verifies the host even before gcpdl itself has connected; without
    them the keys are pinned on gcpdl's first connection. Returns the managed file's path."""
    validate_name(name)
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise InvalidInput(f"'{ip}' is not an IP address.") from None
    entry = HostEntry(name, ip, str(instance_id), user, int(port), identity_file, known_hosts)
    keys = list(host_keys)
    if keys:
        store(host_alias(instance_id), keys, known_hosts)
    path = managed_path()
    try:
        blocks = _parse_blocks(path.read_text())
    except FileNotFoundError:
        blocks = []
    new = entry.block()
    replaced = [(n, new if n == name else b) for n, b in blocks]
    if name not in {n for n, _ in blocks}:
        replaced.append((name, new))
    _write_managed(replaced)
    ensure_include()
    return path


def refresh_vm(factory: Any, name: str, zone: str | None = None) -> bool:
    """Look VM ``name`` up and refresh its block and pinned host keys. False (nothing changed)
    when it is not running: a stopped VM has no address, and its old one may be reused."""
    target = resolve_target(factory, name, zone, require_running=False)
    if target.status != "RUNNING" or not target.host:
        return False
    refresh_host(name, target.host, target.instance_id, user=target.user, port=target.port, host_keys=target.guest_keys)
    return True


def remove_host(name: str) -> bool:
    """Remove VM ``name``'s block; True if there was one. The Include line stays (harmless)."""
    path = managed_path()
    try:
        blocks = _parse_blocks(path.read_text())
    except FileNotFoundError:
        return False
    kept = [(n, b) for n, b in blocks if n != name]
    if len(kept) == len(blocks):
        return False
    _write_managed(kept)
    return True


def has_host(name: str) -> bool:
    try:
        return name in {n for n, _ in _parse_blocks(managed_path().read_text())}
    except FileNotFoundError:
        return False
