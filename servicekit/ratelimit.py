"""Per-caller rate limits for expensive calls: who is calling, and may they call again now.

A caller is the identity of its bearer token (a digest, never the token) or, without one,
the peer's host (not its port: every new connection has another port). Calls with a token
also count against their host at HOST_FACTOR times the rate: a server without configured
tokens accepts any bearer value, and a new made-up token per call must not mean a new share.
"""

from __future__ import annotations

import hashlib
import time

import limits
from grpc import aio
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from servicekit import auth, errors

HOST_FACTOR = 4


def peer_host(context: aio.ServicerContext) -> str:
    """`peer:<kind>:<host>` of a call, without the port."""
    peer = context.peer() or "unknown"
    # "ipv4:127.0.0.1:5555", "ipv6:[::1]:5555", "unix:/path": drop the port of ip peers.
    kind, _, address = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        address = address.rsplit(":", 1)[0]
    return f"peer:{kind}:{address}"


def caller_of(context: aio.ServicerContext) -> str:
    """`token:<digest>` for a call with a bearer token, else `peer:<kind>:<host>`."""
    token = auth.bearer_token(context.invocation_metadata())
    if token is not None:
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    return peer_host(context)


class CallerRateLimit:
    """At most `limit` (e.g. "10/second", see the `limits` package) calls per caller in a
    moving window; `check` raises RESOURCE_EXHAUSTED with a RetryInfo when over it."""

    def __init__(self, limit: str, what: str = "calls") -> None:
        self._item = limits.parse(limit)
        self._host_item = type(self._item)(self._item.amount * HOST_FACTOR,
                                           self._item.multiples, namespace="HOST")
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self._what = what
        self.limit = limit

    def check(self, caller: str, host: str | None = None) -> None:
        """Count one call of `caller` (and of its `host`, when given), or refuse it."""
        buckets = [(self._item, caller, "caller")]
        if host is not None:
            buckets.append((self._host_item, host, "host"))
        for item, key, per in buckets:
            if not self._limiter.test(item, key):
                stats = self._limiter.get_window_stats(item, key)
                # The storage's clock is the wall clock; at least a millisecond to back off.
                wait = max(0.001, stats.reset_time - time.time())
                raise errors.resource_exhausted(
                    f"too many {self._what}: at most {item} per {per}; retry in {wait:.1f} s",
                    retry_after=wait, reason="RATE_LIMITED",
                )
        for item, key, _ in buckets:
            self._limiter.hit(item, key)

    def check_call(self, context: aio.ServicerContext) -> None:
        """`check` for the caller of a gRPC call (and its host, when it sent a token)."""
        caller = caller_of(context)
        self.check(caller, None if caller.startswith("peer:") else peer_host(context))
