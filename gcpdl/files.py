"""Private local state: folders 0700 and files 0600 whatever the umask, written atomically.

Everything gcpdl keeps on the laptop (config.toml, the SSH key pair, known_hosts, the ssh config
include) goes through these two functions. The modes are set explicitly (never left to the
umask): with `umask 000` a world-writable config folder would let another local user redirect
`compute_endpoint` and capture the access tokens sent there. Writes go to a fresh temporary file
(O_EXCL | O_NOFOLLOW, so a planted symlink is never followed) in the same folder, are flushed,
and are renamed over the target, so a crash leaves the old file or the new one, never half.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path, mode: int = PRIVATE_DIR) -> Path:
    """Create ``path`` (and missing parents) with ``mode``; a folder that already existed keeps
    its parents' modes but ``path`` itself is set to ``mode`` (it is gcpdl's own)."""
    path = Path(path)
    missing: list[Path] = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            pass
        os.chmod(d, mode)  # mkdir's mode is filtered by the umask (e.g. 0200 drops owner bits)
    if path.is_dir() and not path.is_symlink() and (path.stat().st_mode & 0o777) != mode:
        os.chmod(path, mode)
    return path


def write_private(path: Path, data: str | bytes, mode: int = PRIVATE_FILE, make_dir: bool = True) -> Path:
    """Atomically replace ``path`` with ``data``, created with ``mode`` from its first byte.
    With ``make_dir`` the folder is created 0700 when missing (an existing one is left alone)."""
    path = Path(path)
    if make_dir and not path.parent.exists():
        private_dir(path.parent)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, mode)
    try:
        os.fchmod(fd, mode)  # the mode given to open() is filtered by the umask too
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
