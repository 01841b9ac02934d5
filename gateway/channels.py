"""gRPC channels to the other services, carrying an admin bearer token when servers need one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from grpc import aio

from servicekit.auth import Role, Token


class _BearerInterceptor:
    """Adds `authorization: Bearer TOKEN` to every call (when the server requires tokens)."""

    def __init__(self, token: str) -> None:
        self._md = ("authorization", f"Bearer {token}")

    def _details(self, d: aio.ClientCallDetails) -> aio.ClientCallDetails:
        md = aio.Metadata(*(d.metadata or ()))
        md.add(*self._md)
        return aio.ClientCallDetails(d.method, d.timeout, md, d.credentials, d.wait_for_ready)

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(self._details(client_call_details), request)


class _BearerUnary(_BearerInterceptor, aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    pass


class _BearerStream(_BearerInterceptor, aio.UnaryStreamClientInterceptor):  # type: ignore[misc]
    pass


def service_channel(address: str, tokens: list[Token]) -> aio.Channel:
    """A channel to another service; with an admin token in `tokens`, every call carries it."""
    admin = next((t for t in tokens if t.role == Role.ADMIN), None)
    # grpc.aio files each interceptor under its first matching kind only: one per kind.
    interceptors = (
        [_BearerUnary(admin.value.decode()), _BearerStream(admin.value.decode())]
        if admin else None
    )
    return aio.insecure_channel(address, interceptors=interceptors)
