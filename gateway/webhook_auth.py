"""Per-endpoint webhook authentication: ask the transfer service whether a bearer token is the
endpoint's webhook secret (the stored secret never leaves it), caching positive answers briefly.

The cache is keyed by a SHA-256 of (endpoint, token), so the token itself is never kept; a
rotated secret stops working within `ttl_s`. Wrong tokens are not cached, so a corrected
registry configuration works at once.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import time
from dataclasses import dataclass

import grpc
from grpc import aio
from mirror.v1 import transfer_pb2, transfer_pb2_grpc

log = logging.getLogger("gateway.webhook_auth")


class Verdict(enum.Enum):
    OK = "ok"
    # Wrong token, or the endpoint has no webhook secret (then `message` says so).
    WRONG = "wrong"
    UNKNOWN_ENDPOINT = "unknown_endpoint"
    # The transfer service could not answer: the registry should retry (503).
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Verification:
    verdict: Verdict
    message: str


class WebhookVerifier:
    """VerifyWebhookSecret through the transfer service's gRPC API."""

    def __init__(
        self,
        stub: transfer_pb2_grpc.TransferServiceStub,
        *,
        ttl_s: float = 30.0,
        max_entries: int = 4096,
        timeout_s: float = 5.0,
    ) -> None:
        self.stub = stub
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.timeout_s = timeout_s
        self._ok_until: dict[bytes, float] = {}

    @staticmethod
    def _key(endpoint: str, token: str) -> bytes:
        return hashlib.sha256(f"{endpoint}\0{token}".encode()).digest()

    async def verify(self, endpoint: str, token: str) -> Verification:
        key = self._key(endpoint, token)
        now = time.monotonic()
        if self._ok_until.get(key, 0.0) > now:
            return Verification(Verdict.OK, "")
        try:
            resp = await self.stub.VerifyWebhookSecret(
                transfer_pb2.VerifyWebhookSecretRequest(endpoint=endpoint, secret=token),
                timeout=self.timeout_s,
            )
        except aio.AioRpcError as err:
            return self._on_error(endpoint, err)
        if resp.ok:
            if len(self._ok_until) >= self.max_entries:
                self._ok_until = {k: t for k, t in self._ok_until.items() if t > now}
                if len(self._ok_until) >= self.max_entries:
                    self._ok_until.clear()
            self._ok_until[key] = now + self.ttl_s
            return Verification(Verdict.OK, "")
        if not resp.has_webhook_secret:
            return Verification(
                Verdict.WRONG,
                f"endpoint {endpoint!r} has no webhook secret: set one on the endpoint, "
                "or post to /events with the shared secret",
            )
        return Verification(Verdict.WRONG, f"wrong webhook token for endpoint {endpoint!r}")

    def _on_error(self, endpoint: str, err: aio.AioRpcError) -> Verification:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return Verification(Verdict.UNKNOWN_ENDPOINT, f"endpoint {endpoint!r} not found")
        # Anything else (down, overloaded, too old to know the RPC, our channel not allowed):
        # the event may be genuine, so the registry is asked to retry. The token is never logged.
        log.warning(
            "cannot verify the webhook token for endpoint %r: %s %s",
            endpoint,
            err.code().name,
            (err.details() or "")[:200],
        )
        return Verification(
            Verdict.UNAVAILABLE,
            f"cannot verify the webhook token now ({err.code().name}); retry later",
        )
