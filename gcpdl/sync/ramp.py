"""How hard we push a bucket: a concurrency window and a request-rate ceiling.

GCS gives a new (cold) bucket about 5,000 object reads/s and scales it up as load persists,
asking clients to ramp up gradually and double at most every 20 minutes
(https://cloud.google.com/storage/docs/request-rate). So:

* a token bucket caps the request rate at INITIAL_RATE and doubles the cap every
  RATE_DOUBLING_S while we keep it busy; with 64 in flight and ~20 ms latency we send ~3,000/s,
  under the cap, so the cap only binds for many jobs against a very fast endpoint;
* a window of requests in flight starts at INITIAL_WINDOW, grows by one per success up to
  --jobs (slow start: it doubles every round trip, so 64 is reached within ~60 responses and
  the first instant never opens --jobs connections at once), and halves on 429/503 (at most once per second, so one burst of
  throttling does not collapse it to 1), then grows additively again.
"""

from __future__ import annotations

import asyncio
import collections
import time

INITIAL_WINDOW = 4
INITIAL_RATE = 5000.0  # requests/s
RATE_DOUBLING_S = 20 * 60.0


class RateLimiter:
    def __init__(self, rate: float = INITIAL_RATE, doubling_s: float = RATE_DOUBLING_S, clock=time.monotonic):
        self.start = clock()
        self.rate0 = rate
        self.doubling_s = doubling_s
        self.clock = clock
        self.tokens = min(rate, 100.0)  # a small burst, not a second's worth
        self.last = self.start

    def rate(self, now: float) -> float:
        return self.rate0 * (2.0 ** ((now - self.start) // self.doubling_s))

    async def take(self) -> None:
        now = self.clock()
        rate = self.rate(now)
        self.tokens = min(rate / 10.0, self.tokens + (now - self.last) * rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return
        wait = (1.0 - self.tokens) / rate
        self.tokens -= 1.0
        await asyncio.sleep(wait)


class Window:
    """An asyncio semaphore whose size changes (AIMD)."""

    def __init__(self, maximum: int, initial: int = INITIAL_WINDOW, clock=time.monotonic):
        self.maximum = max(1, maximum)
        self.limit = float(min(self.maximum, max(1, initial)))
        self.in_use = 0
        self.slow_start = True
        self.clock = clock
        self._last_cut = -1e9
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self.peak = 0

    async def acquire(self) -> None:
        if self.in_use < int(self.limit) and not self._waiters:
            self.in_use += 1
            self.peak = max(self.peak, self.in_use)
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release_slot()
            raise
        self.peak = max(self.peak, self.in_use)

    def cap(self, maximum: int) -> None:
        self.maximum = max(1, min(self.maximum, maximum))
        self.limit = min(self.limit, float(self.maximum))

    def release(self, throttled: bool = False) -> None:
        if throttled:
            now = self.clock()
            if now - self._last_cut > 1.0:
                self.limit = max(1.0, self.limit / 2)
                self.slow_start = False
                self._last_cut = now
        elif self.limit < self.maximum:
            self.limit = min(float(self.maximum), self.limit + (1.0 if self.slow_start else 1.0 / self.limit))
        self._release_slot()

    def _release_slot(self) -> None:
        self.in_use -= 1
        while self._waiters and self.in_use < int(self.limit):
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_use += 1  # hand the slot over directly
                fut.set_result(None)
