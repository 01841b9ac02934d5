"""Per-caller rate limits for expensive calls: who is calling, and may they call again now.

A caller is the identity of its bearer token (a digest, never the token) or, without one,
the peer's host (not its port: every new connection has another port).
"""

from __future__ import annotations

import hashlib
import time

import limits
from grpc import aio
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from servicekit import auth, errors


def caller_of(context: aio.ServicerContext) -> str:
    """`token:<digest>` for a call with a bearer token, else `peer:<host>`."""
    token = auth.bearer_token(context.invocation_metadata())
    if token is not None:
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    peer = context.peer() or "unknown"
    # "ipv4:127.0.0.1:5555", "ipv6:[::1]:5555", "unix:/path": drop the port of ip peers.
    kind, _, address = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        address = address.rsplit(":", 1)[0]
    return f"peer:{kind}:{address}"


class CallerRateLimit:
    """At most `limit` (e.g. "10/second", see the `limits` package) calls per caller in a
    moving window; `check` raises RESOURCE_EXHAUSTED with a RetryInfo when over it."""

    def __init__(self, limit: str, what: str = "calls") -> None:
        self._item = limits.parse(limit)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._what = what
        self.limit = limit

    def check(self, caller: str) -> None:
        if self._limiter.hit(self._item, caller):
            return
        stats = self._limiter.get_window_stats(self._item, caller)
        # The storage's clock is the wall clock; at least a millisecond so clients back off.
        wait = max(0.001, stats.reset_time - time.time())
        raise errors.resource_exhausted(
            f"too many {self._what}: at most {self._item} per caller; retry in {wait:.1f} s",
            retry_after=wait, reason="RATE_LIMITED",
        )

    def check_call(self, context: aio.ServicerContext) -> None:
        """`check` for the caller of a gRPC call."""
        self.check(caller_of(context))
