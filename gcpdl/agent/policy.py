"""The idle window: a pure state machine over monotonic time (stdlib only).

A tick counts as idle only when every reading says IDLE. The window restarts on any busy or
unknown reading, on a change of the setting to off, and whenever the time between two ticks is
not what the loop intended (a process frozen by SIGSTOP, a suspended VM, a clock that went
backwards): the agent cannot vouch for what happened while it was not looking. Wall-clock time
never enters the decision, so setting the clock forward cannot stop a VM.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from gcpdl.agent.signals import IDLE, Reading

DEFAULT_WINDOW_MINUTES = 60
TICK_SECONDS = 60.0  # how often the agent looks; the window is counted in observed ticks
# A gap longer than this many ticks means the agent was not running: restart the window.
MAX_GAP_TICKS = 3.0
MIN_WINDOW_MINUTES, MAX_WINDOW_MINUTES = 5, 7 * 24 * 60


def parse_window(raw: str | None, default: int | None = DEFAULT_WINDOW_MINUTES) -> int | None:
    """The ``gcpdl-autostop`` metadata value -> minutes, None for off.

    Lenient on purpose (the CLI validates what it writes): '60', '60m', '2h', '1h30m', 'off'.
    Absent (None) or unparsable values give ``default``: a typo in the console must not switch
    autostop off and burn credits.
    """
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in ("off", "none", "never", "false", "0", "disabled"):
        return None
    m = re.fullmatch(r"(?:(\d+)\s*h)?\s*(?:(\d+)\s*(?:m|min|mins|minutes)?)?", value)
    if not value or not m or not (m.group(1) or m.group(2)):
        return default
    minutes = int(m.group(1) or 0) * 60 + int(m.group(2) or 0)
    return max(MIN_WINDOW_MINUTES, min(MAX_WINDOW_MINUTES, minutes))


@dataclass(frozen=True)
class Decision:
    stop: bool
    idle_seconds: float  # how long every signal has been idle (0 when not idle now)
    window_minutes: int | None  # None: autostop is off
    blockers: tuple[str, ...] = ()  # readings that were busy or unknown, or why the window restarted

    def describe(self) -> str:
        if self.window_minutes is None:
            return "autostop off"
        head = f"idle {self.idle_seconds / 60:.1f}/{self.window_minutes} min"
        return head + (f"; not idle: {'; '.join(self.blockers)}" if self.blockers else "")


@dataclass
class IdlePolicy:
    tick_seconds: float = TICK_SECONDS
    max_gap_ticks: float = MAX_GAP_TICKS
    idle_since: float | None = None  # monotonic seconds
    last_tick: float | None = None

    def reset(self) -> None:
        self.idle_since = None

    def observe(self, now: float, readings: Sequence[Reading], window_minutes: int | None) -> Decision:
        blockers = [str(r) for r in readings if r.state != IDLE]
        previous, self.last_tick = self.last_tick, now
        if previous is not None:
            gap = now - previous
            if gap < 0 or gap > self.tick_seconds * self.max_gap_ticks:
                blockers.append(f"clock gap of {gap:.0f}s between ticks")
        if window_minutes is None or blockers:
            self.idle_since = None
            return Decision(False, 0.0, window_minutes, tuple(blockers))
        if self.idle_since is None:
            self.idle_since = now
        idle = now - self.idle_since
        return Decision(idle >= window_minutes * 60, idle, window_minutes)
