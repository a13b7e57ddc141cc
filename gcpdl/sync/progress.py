"""What the engine reports while it runs, and at the end. Rendering lives in gcpdl/cli/sync.py."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
    failures: list[Failure] = field(default_factory=list)
    would_delete: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"] = [asdict(f) for f in self.failures][:100]
        if not self.dry_run:
            d.pop("would_delete")
        return d


# --- progress relayed from the VM ------------------------------------------------------------
# The engine on the VM (`sync --on`) prints each Progress as a record line on stderr when this
# variable is set; the local side turns them back into Progress and draws its own bar or lines.
RECORD_ENV = "GCPDL_PROGRESS_RECORDS"
RECORD_PREFIX = "@gcpdl-progress "
RECORD_EVERY = 0.5  # seconds between records (the local bar redraws from them)


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
