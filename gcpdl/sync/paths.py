"""Map object names to safe paths inside DEST.

An object name is untrusted input: `..`, absolute paths, control characters (NUL, TAB, ESC, DEL,
the C1 range: they would reach file names, terminals and scripts), empty components, and names
that would land in our own state dir are refused, so nothing is ever written outside DEST.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

STATE_DIRNAME = ".gcpdl"
NAME_MAX = 255  # bytes per path component on ext4/xfs
# C0 (NUL..US), DEL and C1: Unicode category Cc, exactly what str.isprintable() and repr() escape
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Unsafe:
    name: str
    reason: str


def relative_path(name: str, prefix: str) -> str | Unsafe | None:
    """The path relative to DEST for object ``name`` listed under ``prefix``.

    Returns None for folder placeholders (names ending in '/'), an Unsafe for names that must
    never be written, else a relative POSIX path whose components are all plain names.
    """
    if name.endswith("/"):
        return None
    rel = name[len(prefix) :] if prefix and name.startswith(prefix) else name
    if _CONTROL.search(rel):
        return Unsafe(name, "contains a control character")
    if rel.startswith("/"):
        return Unsafe(name, "is an absolute path")
    parts = rel.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            return Unsafe(name, f"has a '{part or '//'}' path component")
        if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
            return Unsafe(name, f"has a path component longer than {NAME_MAX} bytes")
    if parts[0] == STATE_DIRNAME:
        return Unsafe(name, f"would overwrite gcpdl's own {STATE_DIRNAME}/ state directory")
    return rel


class Filters:
    """--include / --exclude globs matched against the path relative to the prefix.

    A path is kept when it matches some include (or there are none) and no exclude. `*` matches
    across '/' like gsutil's -x regexes do, which is what people expect for `*.jpg`.
    """

    def __init__(self, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()):
        self.include = re.compile("|".join(fnmatch.translate(g) for g in include)) if include else None
        self.exclude = re.compile("|".join(fnmatch.translate(g) for g in exclude)) if exclude else None

    def __bool__(self) -> bool:
        return self.include is not None or self.exclude is not None

    def keep(self, rel: str) -> bool:
        if self.include is not None and not self.include.match(rel):
            base = rel.rsplit("/", 1)[-1]
            if not self.include.match(base):
                return False
        if self.exclude is not None:
            base = rel.rsplit("/", 1)[-1]
            if self.exclude.match(rel) or self.exclude.match(base):
                return False
        return True
