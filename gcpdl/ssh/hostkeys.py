"""Host keys: the VM's guest attributes -> gcpdl's own known_hosts, keyed by instance id.

A VM publishes its sshd host keys in the guest attribute namespace `hostkeys` (the guest
agent does this at boot; gcloud reads the same place). gcpdl stores them under the alias
``gcpdl-<instance id>`` in its own known_hosts file, never in ~/.ssh/known_hosts: ephemeral
external IPs are reused across projects, so keying by IP would raise false alarms (or, worse,
teach users to ignore them). The system `ssh` client reads the same file through
UserKnownHostsFile + HostKeyAlias in the managed config block, so both clients agree.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from gcpdl.errors import HostKeyMismatch, SshError
from gcpdl.files import private_dir, write_private
from gcpdl.ssh.keys import key_dir

KNOWN_HOSTS_NAME = "known_hosts"


@dataclass(frozen=True)
class HostKey:
    type: str  # "ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"
    blob: str  # base64 of the public key, as in known_hosts and the guest attribute value

    def fingerprint(self) -> str:
        """OpenSSH's SHA256 fingerprint, the form `ssh-keygen -lf` and the ssh client print."""
        digest = hashlib.sha256(base64.b64decode(self.blob)).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def line(self, alias: str) -> str:
        return f"{alias} {self.type} {self.blob}"


def host_alias(instance_id: str | int) -> str:
    return f"gcpdl-{instance_id}"


def known_hosts_path() -> Path:
    return key_dir() / KNOWN_HOSTS_NAME


def read_known(alias: str, path: Path | None = None) -> list[HostKey]:
    path = path or known_hosts_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and alias in parts[0].split(","):
            out.append(HostKey(parts[1], parts[2]))
    return out


# known_hosts is read, changed and written whole: threads of one process (a cluster's nodes get
# ready in parallel) take turns, or one would write back a file without another's keys
FILE_LOCK = threading.RLock()


def store(alias: str, keys: Iterable[HostKey], path: Path | None = None) -> None:
    """Replace the entries for ``alias`` (other lines are kept as they are), atomically."""
    with FILE_LOCK:
        _store(alias, keys, path)


def _store(alias: str, keys: Iterable[HostKey], path: Path | None = None) -> None:
    path = path or known_hosts_path()
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        lines = []
    kept = [ln for ln in lines if not (ln.split() and alias in ln.split()[0].split(","))]
    kept += [k.line(alias) for k in keys]
    if not path.parent.exists():
        private_dir(path.parent)
    write_private(path, "\n".join(kept) + ("\n" if kept else ""))


def forget(alias: str, path: Path | None = None) -> None:
    store(alias, [], path)


def parse_guest_attributes(payload: dict[str, Any]) -> list[HostKey]:
    """The `hostkeys/` query answer: queryValue.items = [{namespace, key: type, value: blob}]."""
    items = (payload.get("queryValue") or {}).get("items") or []
    keys = []
    for item in items:
        kind, value = item.get("key"), (item.get("value") or "").strip()
        if not kind or not value:
            continue
        # some guest agents publish "type blob"; keep only the blob
        blob = value.split()[-1] if " " in value else value
        keys.append(HostKey(kind, blob))
    return keys


def paramiko_key_types(keys: Iterable[HostKey]) -> list[str]:
    """Host key algorithms to offer so the server picks a key we can check (ed25519 first)."""
    order = ["ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa"]
    have = {k.type for k in keys}
    out: list[str] = []
    for kind in order:
        if kind in have:
            # RSA host keys are negotiated as rsa-sha2-*; plain ssh-rsa (SHA-1) only as a last resort
            out += ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] if kind == "ssh-rsa" else [kind]
    return out


class HostKeysUnavailable(SshError):
    """The VM's published host keys could not be read (5xx, 429, timeout, network): gcpdl
    cannot tell "published none" from "read failed", so it does not connect."""


def fingerprints(keys: Iterable[HostKey]) -> str:
    return ", ".join(k.fingerprint() for k in keys)


def replaced_message(name: str, dropped: Iterable[HostKey], published: Iterable[HostKey]) -> str:
    return (
        f"VM {name}'s host key pinned earlier ({fingerprints(dropped)}) is not one it publishes "
        f"({fingerprints(published)}): gcpdl now trusts only the published keys, so `ssh {name}` refuses the old one. "
        f"A connection made with the old key may not have reached your VM."
    )


def pin_published(alias: str, published: Iterable[HostKey], path: Path | None = None) -> list[HostKey]:
    """Make the VM's published keys (read over the authenticated Compute API, the authority)
    the pinned ones for ``alias``. Returns the pinned keys that disagreed and were dropped, so
    the caller reports them: an earlier first-use pin may have been an impostor."""
    path = path or known_hosts_path()
    published = list(published)
    with FILE_LOCK:
        stored = read_known(alias, path)
        if published and sorted(stored, key=str) != sorted(published, key=str):
            store(alias, published, path)
    return [k for k in stored if k not in published] if published else []


@dataclass(frozen=True)
class Verdict:
    trusted_by: str  # "guest-attributes", "known_hosts", "first-use"
    key: HostKey
    dropped: tuple[HostKey, ...] = ()  # pinned keys the VM does not publish (now removed)
    published: tuple[HostKey, ...] = ()

    def message(self, name: str) -> str | None:
        if self.trusted_by == "first-use":
            return (
                f"Warning: VM {name} published no SSH host keys (its guest attributes are empty or turned off), "
                f"so gcpdl cannot verify it: trusting the {self.key.type} key it presented on first use, and no "
                f"other from now on: {self.key.fingerprint()}"
            )
        if self.dropped:
            return "Warning: " + replaced_message(name, self.dropped, self.published)
        return None


def check(
    presented: HostKey,
    name: str,
    alias: str,
    guest_keys: Iterable[HostKey] = (),
    path: Path | None = None,
) -> Verdict:
    """Accept ``presented`` or raise HostKeyMismatch. Guest attributes, read over the
    authenticated Compute API, are the authority when the VM published them; otherwise the
    keys stored on an earlier connection; otherwise trust on first use (and say so). A failed
    read of the guest attributes never gets here (HostKeysUnavailable): ``guest_keys`` empty
    means the API said the VM published none."""
    path = path or known_hosts_path()
    guest = list(guest_keys)
    if guest:
        if presented in guest:
            dropped = pin_published(alias, guest, path)
            return Verdict("guest-attributes", presented, tuple(dropped), tuple(guest))
        expected = fingerprints(guest)
        raise HostKeyMismatch(
            f"The host key of VM {name} does not match the keys it published: it presented "
            f"{presented.type} {presented.fingerprint()}, expected {expected}. gcpdl did not connect "
            f"(this can mean someone is intercepting the connection).",
            fix=f"Only if you changed the VM's host keys yourself: restart it (gcpdl stop {name} && gcpdl start {name}); gcpdl's startup script publishes the keys sshd has at every boot (the guest agent only on a new instance's first).",
        )
    stored = read_known(alias, path)
    if stored:
        if presented in stored:
            return Verdict("known_hosts", presented)
        expected = fingerprints(stored)
        raise HostKeyMismatch(
            f"The host key of VM {name} changed: it presented {presented.type} {presented.fingerprint()}, "
            f"gcpdl trusted {expected}. gcpdl did not connect (this can mean someone is intercepting the connection).",
            fix=f"If you rebuilt the VM on purpose, reset it with: ssh-keygen -R {alias} -f {path}",
        )
    store(alias, [presented], path)
    return Verdict("first-use", presented)
