"""gcpdl's own SSH identity: one ed25519 key pair, generated once, private key 0600."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gcpdl.files import private_dir, write_private
from gcpdl.settings import state_dir

SSH_USER = "gcpdl"
KEY_NAME = "id_ed25519"
PUBLIC_FILE = 0o644  # readable (ssh-copy-id, other tools) but never writable by others


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_line: str  # "ssh-ed25519 AAAA... gcpdl"

    def metadata_entry(self, user: str = SSH_USER) -> str:
        """The instance's `ssh-keys` metadata line for ``user``."""
        return f"{user}:{self.public_line}"


def key_dir() -> Path:
    return state_dir() / "ssh"


def ensure_keypair(directory: Path | None = None) -> KeyPair:
    """Load gcpdl's key pair, creating it on first use. Never overwrites an existing key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory = directory or key_dir()
    private = directory / KEY_NAME
    public = directory / (KEY_NAME + ".pub")
    private_dir(directory)
    if not private.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        )
        pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        # 0600 from the first byte (no window where the key is readable by others), atomically
        write_private(public, pub.decode() + " gcpdl\n", mode=PUBLIC_FILE)
        write_private(private, pem)
    else:
        os.chmod(private, 0o600)
        if not public.exists():
            from cryptography.hazmat.primitives.serialization import load_ssh_private_key

            key = load_ssh_private_key(private.read_bytes(), password=None)
            pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            write_private(public, pub.decode() + " gcpdl\n", mode=PUBLIC_FILE)
    return KeyPair(private, public.read_text().strip())
