"""Deadlines and backoff. Every wait in gcpdl is bounded by a Deadline and passes the remaining
time down. The clock and the sleeper are injectable so tests never sleep for real."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable

from gcpdl.errors import DeadlineExceeded

Clock = Callable[[], float]
Sleeper = Callable[[float], None]


@dataclass
class Deadline:
    seconds: float
    what: str = "the operation"
    clock: Clock = time.monotonic
    sleep: Sleeper = time.sleep
    start: float = field(init=False)

    def __post_init__(self) -> None:
        self.start = self.clock()

    @property
    def at(self) -> float:
        return self.start + self.seconds

    def remaining(self) -> float:
        return max(0.0, self.at - self.clock())

    def expired(self) -> bool:
        return self.clock() >= self.at

    def check(self) -> None:
        if self.expired():
            raise DeadlineExceeded(f"Timed out after {self.seconds:g}s waiting for {self.what}.")

    def pause(self, seconds: float) -> None:
        """Sleep for ``seconds`` but never past the deadline; raise if the deadline has passed."""
        self.check()
        self.sleep(min(seconds, self.remaining()))


def backoff(attempt: int, base: float = 0.5, cap: float = 20.0, jitter: bool = True) -> float:
    """Exponential backoff with full jitter (attempt starts at 0)."""
    delay = min(cap, base * (2**attempt))
    return random.uniform(0, delay) if jitter else delay
