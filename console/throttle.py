"""Failed sign-ins per client address: after `limit` failures within `window_s`, further
attempts from that address are refused until the oldest failure leaves the window."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class SignInThrottle:
    def __init__(self, limit: int, window_s: float, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_clients = max_clients
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        now = self._clock()
        times = self._failures.get(key, deque())
        while times and now - times[0] > self.window_s:
            times.popleft()
        return times

    def retry_after(self, key: str) -> float:
        """Seconds until `key` may try again (0: now)."""
        times = self._recent(key)
        if len(times) < self.limit:
            return 0.0
        return max(0.0, self.window_s - (self._clock() - times[0]))

    def failed(self, key: str) -> None:
        times = self._recent(key)
        times.append(self._clock())
        self._failures.pop(key, None)
        self._failures[key] = times  # newest last: the dict is ordered by last failure
        while len(self._failures) > self.max_clients:
            del self._failures[next(iter(self._failures))]

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)
