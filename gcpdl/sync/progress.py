"""What the engine reports while it runs, and at the end. Rendering lives in gcpdl/cli/sync.py."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from gcpdl.errors import SyncIncomplete


@dataclass
class Progress:
    files_done: int
    files_total: int  # to fetch, as far as the listing has got
    bytes_done: int
    bytes_total: int
    skipped: int  # already up to date
    failed: int
    listed: int
    listing_done: bool
    elapsed: float

    @property
    def files_per_s(self) -> float:
        return self.files_done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes_done / 1e6 / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left, once the listing is complete and bytes are moving."""
        if not self.listing_done or self.elapsed <= 0 or self.bytes_done <= 0:
            return None
        rate = self.bytes_done / self.elapsed
        return max(0.0, (self.bytes_total - self.bytes_done) / rate)


@dataclass
class Failure:
    name: str
    reason: str


@dataclass
class InTheWay:
    name: str  # the object
    path: str  # relative to DEST: what is in its way
    reason: str  # "is a folder, not a file", ...


@dataclass
class SyncSummary:
    source: str
    dest: str
    files: int = 0  # fetched (or, with dry_run, that would be fetched)
    bytes: int = 0
    seconds: float = 0.0
    files_per_s: float = 0.0
    mb_per_s: float = 0.0
    skipped: int = 0  # up to date already
    failed: int = 0
    listed: int = 0
    unsafe: int = 0
    placeholders: int = 0
    filtered: int = 0
    collisions: int = 0
    gone: int = 0  # deleted or overwritten in the bucket while we ran
    deleted: int = 0
    retries: int = 0
    requests: int = 0
    dry_run: bool = False
    complete: bool = True  # every listed object the filters keep is in DEST, verified
    missing: int = 0  # listed and kept by the filters, but not in DEST: failed + gone + collisions + unsafe
    failures: list[Failure] = field(default_factory=list)
    blocked: list[InTheWay] = field(default_factory=list)  # the first 100 collisions, named
    would_delete: list[str] = field(default_factory=list)

    def finish(self) -> None:
        self.failed = len(self.failures)
        self.missing = self.failed + self.gone + self.collisions + self.unsafe
        self.complete = self.missing == 0

    def incomplete(self) -> SyncIncomplete | None:
        """The error that says why DEST is not a full copy (None when it is)."""
        if self.complete:
            return None
        wanted = self.listed - self.placeholders - self.filtered
        why = []
        if self.failures:
            names = ", ".join(f"{f.name} ({f.reason})" for f in self.failures[:5])
            more = f" and {len(self.failures) - 5} more" if len(self.failures) > 5 else ""
            why.append(f"{self.failed} failed: {names}{more}")
        if self.gone:
            why.append(f"{self.gone} changed in the bucket during the sync")
        if self.collisions:
            why.append(f"{self.collisions} in the way of another file or folder")
        if self.unsafe:
            why.append(f"{self.unsafe} with {_plural(self.unsafe, 'a name that cannot', 'names that cannot')} be written safely")
        fixes = []
        again = self.failed + self.gone
        if again:
            fixes.append(f"Re-run to fetch {again} {_plural(again, 'object', 'objects')}.")
        if self.collisions or self.unsafe:
            fixes.append("Move what is in the way (see the warnings), or leave those names out with --exclude.")
        verb = _plural(self.missing, "is", "are")
        return SyncIncomplete(
            f"Sync incomplete: {self.missing} of {wanted} objects {verb} not in DEST ({', '.join(why)}).", fix=" ".join(fixes)
        )

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"] = [asdict(f) for f in self.failures][:100]
        d["blocked"] = [asdict(b) for b in self.blocked][:100]
        if not self.dry_run:
            d.pop("would_delete")
        return d


def _plural(n: int, one: str, many: str) -> str:
    return one if n == 1 else many
# --- progress relayed from the VM ------------------------------------------------------------
# The engine on the VM (`sync --on`) prints each Progress as a record line on stderr when this
# variable is set; the local side turns them back into Progress and draws its own bar or lines.
RECORD_ENV = "GCPDL_PROGRESS_RECORDS"
RECORD_PREFIX = "@gcpdl-progress "
RECORD_EVERY = 0.5  # seconds between records (the local bar redraws from them)
# Said (with the holder's pid) by a sync on the VM that follows another one for the same DEST
# instead of writing: a local Ctrl-C then stops the follower, not the holder.
ATTACHED_PREFIX = "@gcpdl-following "


def to_record(p: Progress) -> str:
    import json

    return RECORD_PREFIX + json.dumps(asdict(p), separators=(",", ":"))


def from_record(line: str) -> Progress | None:
    """The Progress in a record line, or None if the line is not one (or is damaged)."""
    import json

    if not line.startswith(RECORD_PREFIX):
        return None
    try:
        return Progress(**json.loads(line[len(RECORD_PREFIX):]))
    except (ValueError, TypeError):
        return None


def eta_text(seconds: float | None) -> str:
    """'ETA 1 h 05 min', 'ETA 12 min', 'ETA <1 min'; '' when unknown."""
    if seconds is None or seconds <= 0:  # unknown, or nothing left
        return ""
    minutes = int(round(seconds / 60))
    if seconds < 60:
        return "ETA <1 min"
    if minutes < 60:
        return f"ETA {minutes} min"
    return f"ETA {minutes // 60} h {minutes % 60:02d} min"
