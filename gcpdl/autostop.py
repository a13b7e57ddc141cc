"""`gcpdl autostop NAME 30m|off`: change the idle window of a VM through its instance metadata.

The agent on the VM long-polls its metadata, so a running VM picks the change up at once; a
stopped VM reads it when it next starts. setMetadata replaces the whole list and is guarded by a
fingerprint: on a concurrent change (412) the VM is read again and the write retried.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from gcpdl.errors import InvalidInput, OperationFailed

if TYPE_CHECKING:  # pragma: no cover
    from gcpdl.compute.adapter import Compute

AUTOSTOP_KEY = "gcpdl-autostop"
TIMEOUT = 120.0
FINGERPRINT_RETRIES = 3


@dataclass
class AutostopResult:
    name: str
    zone: str
    status: str
    minutes: int | None  # None: off
    previous: str | None  # the metadata value before, None when unset

    @property
    def value(self) -> str:
        return str(self.minutes) if self.minutes else "off"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["autostop"] = self.value
        d["state"] = d.pop("status")  # the key every other command uses for a VM's state
        return d


def window_minutes(metadata: dict[str, str]) -> int | None:
    """The idle window the VM's agent applies, read as the agent reads it (absent: its default)."""
    from gcpdl.agent.policy import parse_window

    return parse_window(metadata.get(AUTOSTOP_KEY))


def window_label(minutes: int | None) -> str:
    """60 -> "60m", 120 -> "2h", 90 -> "90m", None -> "off": how people write the window."""
    if not minutes:
        return "off"
    return f"{minutes // 60}h" if minutes % 60 == 0 and minutes >= 120 else f"{minutes}m"


def get_autostop(compute: "Compute", name: str) -> AutostopResult:
    """The current setting of VM ``name``; reads only."""
    from gcpdl.compute import lifecycle

    inst = lifecycle.require(compute, name, compute.new_deadline(TIMEOUT, f"the autostop setting of {name}"))
    if not inst.managed:
        raise InvalidInput(f"VM {name} was not created by gcpdl, so it has no autostop agent.")
    previous = inst.metadata.get(AUTOSTOP_KEY)
    return AutostopResult(name, inst.zone, inst.status, window_minutes(inst.metadata), previous)


def _stale_fingerprint(e: OperationFailed) -> bool:
    text = f"{e.code} {e.message}".lower()
    return "fingerprint" in text or "conditionnotmet" in text or "failed_precondition" in text


def set_autostop(compute: "Compute", name: str, minutes: int | None) -> AutostopResult:
    from gcpdl.compute import lifecycle
    from gcpdl.compute import requests as rq

    deadline = compute.new_deadline(TIMEOUT, f"the autostop setting of {name}")
    for attempt in range(FINGERPRINT_RETRIES):
        inst = lifecycle.require(compute, name, deadline)
        if not inst.managed:
            raise InvalidInput(f"VM {name} was not created by gcpdl, so it has no autostop agent.")
        previous = inst.metadata.get(AUTOSTOP_KEY)
        items = dict(inst.metadata)
        items[AUTOSTOP_KEY] = str(minutes) if minutes else "off"
        try:
            if previous != items[AUTOSTOP_KEY]:
                compute.run(rq.set_metadata(compute.project, inst.zone, name, items, inst.metadata_fingerprint), deadline)
            return AutostopResult(name, inst.zone, inst.status, minutes, previous)
        except OperationFailed as e:
            if not _stale_fingerprint(e) or attempt == FINGERPRINT_RETRIES - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover
