"""How services reach a registry by endpoint name, in one process or through the API."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol


class EndpointResolver(Protocol):
    """`async with resolver.client_for(name) as rc`: a client of the endpoint's registry.

    The transfer service's EndpointStore (in one process: credentials decrypted there) and
    transfer_service.remote.RemoteEndpoints (split services: reads through the transfer
    service's API, so the credentials never leave it) both provide it. NOT_FOUND when the
    endpoint is unknown.
    """

    def client_for(self, name: str) -> AbstractAsyncContextManager[Any]: ...
