"""Limits of one registry: requests per second, pauses it asks for, its announced pull quota.

`TokenBucket` paces requests; `Pause` holds every request after a 429 (Retry-After applies to
the client, not to one request); `QuotaWindow` follows `RateLimit-Remaining`-style headers
(Docker Hub: `RateLimit-Remaining: 76;w=21600`) so that requests counting against the quota
stop at a low-water mark instead of running into 429s.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from registry_client.errors import RetryAfterTooLong

log = logging.getLogger(__name__)

_FIRST_INT = re.compile(r"^\s*(\d+)")
_WINDOW = re.compile(r";\s*w\s*=\s*(\d+)")
# The later IETF draft: `RateLimit: "default";r=50;t=30` (r remaining, t seconds to reset).
_PARAM = re.compile(r";\s*([a-z]+)\s*=\s*(\d+)")


class TokenBucket:
    """`rate` tokens per second, bursts up to `burst`; `rate <= 0` means unlimited."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self.rate <= 0:
            return
        # The lock makes waiters queue in order instead of all waking for the same token.
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self.rate)


class Pause:
    """Until when every request to the registry waits (a 429's Retry-After, or its backoff).

    Only waits up to `cap` are held: a longer Retry-After fails the request that got it
    (RetryAfterTooLong) and leaves the others alone, so a job rescheduled sooner than the
    registry asked (the worker's `reschedule_max`) can still try.
    """

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self.until = 0.0  # monotonic

    def remaining(self) -> float:
        return max(0.0, self.until - time.monotonic())

    def hold(self, seconds: float) -> None:
        """Pause every request for `seconds` from now (an earlier, longer pause stands)."""
        if seconds > self.cap:
            return
        self.until = max(self.until, time.monotonic() + seconds)

    async def wait(self) -> None:
        """Sleep out the pause (a pause that grows meanwhile is slept out too)."""
        while (left := self.remaining()) > 0:
            await asyncio.sleep(left)


@dataclass(frozen=True)
class QuotaReading:
    """What one answer said of the registry's quota."""

    remaining: int
    limit: int | None = None
    window: float | None = None  # seconds the quota is counted over
    reset: float | None = None  # seconds until the quota refills (when the registry says)


def read_quota(headers: Mapping[str, str]) -> QuotaReading | None:
    """The quota from `RateLimit-Remaining`/`-Limit`/`-Reset` (Docker Hub and the first IETF
    drafts, `76;w=21600`) or the later draft's `RateLimit: "x";r=76;t=30`; None without them."""
    remaining_h = headers.get("RateLimit-Remaining")
    limit_h = headers.get("RateLimit-Limit", "")
    if remaining_h is not None:
        m = _FIRST_INT.match(remaining_h)
        if m is None:
            return None
        window = _WINDOW.search(remaining_h) or _WINDOW.search(limit_h)
        lm = _FIRST_INT.match(limit_h)
        reset = _FIRST_INT.match(headers.get("RateLimit-Reset", ""))
        return QuotaReading(
            int(m.group(1)),
            int(lm.group(1)) if lm else None,
            float(window.group(1)) if window else None,
            float(reset.group(1)) if reset else None,
        )
    combined = headers.get("RateLimit")
    if combined is None:
        return None
    params = dict(_PARAM.findall(combined))
    if "r" not in params:
        return None
    policy = dict(_PARAM.findall(headers.get("RateLimit-Policy", "")))
    return QuotaReading(
        int(params["r"]),
        int(policy["q"]) if "q" in policy else None,
        float(policy["w"]) if "w" in policy else None,
        float(params["t"]) if "t" in params else None,
    )


def counts_against_quota(method: str, path: str) -> bool:
    """Whether a request counts against a Docker Hub-style pull quota: manifest GETs do;
    HEADs, blob GETs and tag lists do not."""
    return method == "GET" and "/manifests/" in path


class QuotaWindow:
    """The registry's announced quota of counted requests, kept above `reserve`.

    The estimate is the last reading less the counted requests sent since. When it reaches
    `reserve`, counted requests wait until the window refills: `RateLimit-Reset` when the
    registry says, else the whole window `w` (a sliding window frees its oldest pull within
    `w`), else `cap` (unknown window); a wait over `cap` fails with RetryAfterTooLong naming
    the window. Once that time has passed the quota is unknown again and the next answer's
    headers say what it is.
    """

    def __init__(self, cap: float, reserve: int = 0) -> None:
        self.cap = cap
        self.reserve = max(0, reserve)
        self.remaining: int | None = None
        self.reading: QuotaReading | None = None
        self.refill_at = 0.0  # monotonic; when an exhausted quota may allow again
        self.observed_at = 0.0  # monotonic time of the last reading
        self.in_flight = 0  # counted requests sent, not yet answered

    def observe(self, reading: QuotaReading | None) -> None:
        """Take an answer's reading (after that request left `in_flight`)."""
        if reading is None:
            return
        self.reading = reading
        self.observed_at = time.monotonic()
        # Counted requests still out were probably not in this reading yet.
        self.remaining = reading.remaining - self.in_flight
        self._set_refill()

    def _set_refill(self) -> None:
        r = self.reading
        if self.remaining is None or self.remaining > self.reserve or r is None:
            return
        wait = r.reset if r.reset is not None else r.window if r.window is not None else self.cap
        # Reset and window count from the answer that told them.
        self.refill_at = self.observed_at + wait

    def wait_needed(self) -> float:
        """Seconds a counted request must wait now (0: it may go)."""
        if self.remaining is None or self.remaining > self.reserve:
            return 0.0
        left = self.refill_at - time.monotonic()
        if left <= 0:
            self.remaining = None  # the window has moved on: let the next answer tell
            return 0.0
        return left

    def take(self) -> None:
        """A counted request is sent."""
        self.in_flight += 1
        if self.remaining is not None:
            self.remaining -= 1
            self._set_refill()

    def done(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)

    def exhausted_error(self, context: str, left: float) -> RetryAfterTooLong:
        r = self.reading
        quota = f"{r.limit} " if r is not None and r.limit is not None else ""
        window = (
            f"per {r.window:.0f}s window" if r is not None and r.window is not None
            else "in its window"
        )
        return RetryAfterTooLong(
            429,
            "TOOMANYREQUESTS",
            f"{context}: the registry's pull quota ({quota}manifest GETs {window},"
            f" RateLimit-Remaining {r.remaining if r else 0}) is used down to the reserve of"
            f" {self.reserve}; it allows more in about {left:.0f}s, over the {self.cap:.0f}s"
            " cap",
            retry_after=left,
        )

    async def wait(self, context: str) -> None:
        """Sleep until a counted request may go; RetryAfterTooLong when that is over the cap."""
        while (left := self.wait_needed()) > 0:
            if left > self.cap:
                raise self.exhausted_error(context, left)
            log.info("%s: the registry's pull quota is at its reserve; waiting %.1fs",
                     context, left)
            await asyncio.sleep(left)
