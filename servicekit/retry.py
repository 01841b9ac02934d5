"""The one retry policy of the code base: which failures are worth another try, and how long
to wait before it (capped exponential backoff with full jitter).

Every retry loop (registry client transport and token fetches, the copy engine's blob
retries, the transfer worker's job retries and reschedules, the gateway's inbox, tracker,
notifier and lock waits) asks `is_retryable` (calls between our services:
`transient_rpc_error`) and waits `Backoff.delay(attempt)` (long waits: `Backoff.spread`);
none keeps a table of its own. tests/servicekit/test_one_retry_policy.py holds the code base
to that. (The SDK, which installs without servicekit, retries nothing by its own rule: it
waits only the RetryInfo delay a rate-limited server names, up to its `rate_limit_wait`.)

Retryable: connection errors (refused, reset, dropped), timeouts, HTTP 408, 429 and 5xx
(except 501), gRPC UNAVAILABLE / DEADLINE_EXCEEDED. Never: other 4xx (400, 401, 403, 404...),
API errors of our own services, programming errors. An exception may decide for itself with a
boolean `retryable` attribute (the registry client's typed errors do).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import aiohttp
import grpc

from servicekit.errors import ApiError

# 501 Not Implemented never gets better by asking again.
_NOT_TRANSIENT_5XX = frozenset({501})
# Calls between our services that a later try may pass: down or slow, busy (a rule worker
# slot, a rate limit), a lost etag race. A message over the size limit is RESOURCE_EXHAUSTED
# too, but never passes: see transient_rpc_error.
TRANSIENT_GRPC = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
_RETRYABLE_GRPC = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def message_too_large(err: grpc.RpcError) -> bool:
    """An RPC refused for a message over the gRPC size limit."""
    code = err.code() if callable(getattr(err, "code", None)) else None  # type: ignore[attr-defined]
    details = err.details() if callable(getattr(err, "details", None)) else ""  # type: ignore[attr-defined]
    return code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than" in (details or "")


def transient_rpc_error(err: grpc.RpcError) -> bool:
    """Whether a failed call to another of our services is worth trying again later."""
    code = err.code() if callable(getattr(err, "code", None)) else None  # type: ignore[attr-defined]
    return code in TRANSIENT_GRPC and not message_too_large(err)


def retryable_status(status: int) -> bool:
    """True for HTTP statuses that may succeed on another try: 408, 429 and 5xx but 501."""
    return status in (408, 429) or (500 <= status <= 599 and status not in _NOT_TRANSIENT_5XX)


def is_retryable(exc: BaseException) -> bool:
    """Whether the operation that raised `exc` is worth another try."""
    flag = getattr(exc, "retryable", None)
    if isinstance(flag, bool):
        return flag
    if isinstance(exc, ApiError):
        return False  # our own services' refusals (an endpoint deleted, bad input)
    if isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
        return exc.code() in _RETRYABLE_GRPC
    status = getattr(exc, "status", None)
    if isinstance(status, int) and status > 0:
        return retryable_status(status)
    # Timeouts (TimeoutError is an OSError), resets, refused connections, cut bodies.
    return isinstance(exc, (OSError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError))


def retry_after_hint(exc: BaseException) -> float | None:
    """Seconds the remote side asked us to wait (Retry-After) when `exc` carries them."""
    value = getattr(exc, "retry_after", None)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter: try n (0-based) waits U(0, min(cap,
    base * 2**n)). Full jitter spreads clients that failed together (one registry restart)."""

    base: float = 0.5
    cap: float = 30.0

    def ceiling(self, attempt: int) -> float:
        """The longest wait before try `attempt` + 1."""
        # 2**64 already exceeds every cap; a larger exponent would only overflow.
        return max(0.0, min(self.cap, self.base * 2 ** min(max(attempt, 0), 64)))

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed try `attempt` (0 = the first)."""
        return random.uniform(0.0, self.ceiling(attempt))

    def spread(self, attempt: int) -> float:
        """A long wait after failed try `attempt`: between half the ceiling and the ceiling.

        For waits of minutes to hours (a job rescheduled against a registry that is down):
        the jitter still spreads the jobs that failed together, but none comes back after a
        small fraction of its wait, which would spend a try at once on the same outage.
        """
        top = self.ceiling(attempt)
        return random.uniform(top / 2, top)

    async def sleep(self, attempt: int) -> float:
        """Wait `delay(attempt)`; returns the seconds waited."""
        seconds = self.delay(attempt)
        await asyncio.sleep(seconds)
        return seconds
