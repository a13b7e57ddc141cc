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
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from gcpdl.errors import ConfigError, InvalidInput
from gcpdl.files import PRIVATE_FILE, private_dir, write_private
from gcpdl.settings import escaped
from gcpdl.ssh.hostkeys import HostKey, host_alias, known_hosts_path, pin_published, replaced_message
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


_NEEDS_QUOTES = set(' \t"\'\\#=')


def ssh_value(value: object, what: str, tokens: bool = False, quote: bool = False) -> str:
    """The one way a value reaches an ssh config file. Control characters are refused (a
    newline would start a new directive, e.g. ProxyCommand, that `ssh NAME` runs); values
    with spaces or quotes are double-quoted with backslash escapes (OpenSSH's argv_split);
    ``tokens``: the directive expands %-tokens (IdentityFile, UserKnownHostsFile), so a
    literal % is doubled. ``quote``: always quote (paths)."""
    text = str(value)
    bad = next((c for c in text if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None or not text:
        raise InvalidInput(f"Refusing to write {what} '{escaped(text)}' to the ssh config: it is empty or holds a control character.")
    if tokens:
        text = text.replace("%", "%%")
    if quote or any(c in _NEEDS_QUOTES for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


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
            f"Host {ssh_value(self.name, 'VM name')}",
            f"    HostName {ssh_value(self.host, 'host')}",
            f"    User {ssh_value(self.user, 'ssh_user')}",
        ]
        if self.port != 22:
            lines.append(f"    Port {ssh_value(int(self.port), 'ssh_port')}")
        lines += [
            f"    IdentityFile {ssh_value(identity, 'identity file', tokens=True, quote=True)}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {ssh_value(self.known_hosts or known_hosts_path(), 'known_hosts path', tokens=True, quote=True)}",
            f"    HostKeyAlias {ssh_value(host_alias(self.instance_id), 'host key alias')}",
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


BACKUP_SUFFIX = ".gcpdl-backup"


def _ssh_dir_ready() -> None:
    if not ssh_dir().exists():
        private_dir(ssh_dir())


def _real_config() -> Path:
    """~/.ssh/config, or the file it links to (dotfile managers keep it in a repository): the
    link stays a link and gcpdl edits its target."""
    config = user_config_path()
    real = Path(os.path.realpath(config))
    if real.is_dir():
        raise ConfigError(
            f"{config} is a folder, not a file, so gcpdl cannot add its Include line there.",
            fix=f"Move it away, or connect with: ssh -F {managed_path()} NAME",
        )
    return real


def ensure_include() -> bool:
    """Add `Include <managed file>` at the top of ~/.ssh/config once. True if it was added.
    The first time gcpdl changes a file the user had, it keeps a copy (config.gcpdl-backup
    beside ~/.ssh/config, never overwritten)."""
    config = _real_config()
    managed = managed_path()
    try:
        original = config.read_text()
        mode = config.stat().st_mode & 0o777
    except FileNotFoundError:
        original, mode = None, PRIVATE_FILE
    for line in (original or "").splitlines():
        words = line.strip().split(None, 1)
        if len(words) == 2 and words[0].lower() == "include" and MANAGED_NAME in words[1]:
            return False
    _ssh_dir_ready()
    backup = user_config_path().with_name(user_config_path().name + BACKUP_SUFFIX)
    if original is not None and not backup.exists():
        write_private(backup, original, mode=mode & 0o600 or PRIVATE_FILE)
    include = f"{INCLUDE_COMMENT}\nInclude {ssh_value(managed, 'managed config path', quote=True)}\n"
    # never more open than the user's own (ssh refuses a group/world-writable config)
    write_private(config, include + ("\n" + original if original else ""), mode=mode & 0o644)
    return True


# the managed file is read, changed and written whole: threads of one process (a cluster's nodes
# get ready in parallel) take turns, or one would write back a file without another's block
_LOCK = threading.RLock()


def _write_managed(blocks: list[tuple[str, str]]) -> None:
    text = HEADER + "".join("\n" + b for _, b in blocks)
    _ssh_dir_ready()
    write_private(managed_path(), text)


def refresh_host(
    name: str,
    ip: str,
    instance_id: str | int,
    user: str = "gcpdl",
    port: int = 22,
    identity_file: Path | None = None,
    known_hosts: Path | None = None,
    host_keys: Iterable[HostKey] = (),
    report: Callable[[str], None] | None = None,
) -> Path:
    """Write (or replace) the Host block for VM ``name`` and make sure ~/.ssh/config includes
    the managed file. ``host_keys`` (from the VM's guest attributes) are pinned for the
    instance, so `ssh NAME` verifies the host even before gcpdl itself has connected; without
    them the keys are pinned on gcpdl's first connection. A pinned key the VM does not publish
    is dropped and reported through ``report``. Returns the managed file's path."""
    validate_name(name)
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        raise InvalidInput(f"'{ip}' is not an IP address.") from None
    entry = HostEntry(name, ip, str(instance_id), user, int(port), identity_file, known_hosts)
    keys = list(host_keys)
    dropped = pin_published(host_alias(instance_id), keys, known_hosts)
    if dropped and report is not None:
        report(replaced_message(name, dropped, keys))
    path = managed_path()
    with _LOCK:
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


def refresh_vm(factory: Any, name: str, zone: str | None = None, report: Callable[[str], None] | None = None) -> bool:
    """Look VM ``name`` up and refresh its block and pinned host keys. False (nothing changed)
    when it is not running: a stopped VM has no address, and its old one may be reused."""
    target = resolve_target(factory, name, zone, require_running=False)
    if target.status != "RUNNING" or not target.host:
        return False
    refresh_host(name, target.host, target.instance_id, user=target.user, port=target.port, host_keys=target.guest_keys,
                 report=report)
    return True


def remove_host(name: str) -> bool:
    """Remove VM ``name``'s block; True if there was one. The Include line stays (harmless)."""
    path = managed_path()
    with _LOCK:
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
