"""Which transfer-service endpoint an event came from (by host:port and aliases), cached briefly."""

from __future__ import annotations

import asyncio
import time

from mirror.v1 import transfer_pb2, transfer_pb2_grpc

from gateway.webhook import host_of_url, host_variants


def endpoint_hosts(ep: transfer_pb2.Endpoint) -> set[str]:
    """Every normalized host:port under which an endpoint may report itself."""
    hosts = {host_of_url(ep.url)}
    for alias in ep.aliases:
        hosts.update(host_variants(alias))
    hosts.discard("")
    return hosts


class EndpointDirectory:
    """Lists endpoints through the transfer service's gRPC API and matches hosts to them."""

    def __init__(self, stub: transfer_pb2_grpc.TransferServiceStub, ttl_s: float = 5.0) -> None:
        self.stub = stub
        self.ttl_s = ttl_s
        self._endpoints: list[transfer_pb2.Endpoint] = []
        self._loaded_at = 0.0
        self._lock = asyncio.Lock()

    async def all(self, max_age_s: float | None = None) -> list[transfer_pb2.Endpoint]:
        """The endpoints, refreshed when the cache is older than `max_age_s` (default: ttl)."""
        max_age = self.ttl_s if max_age_s is None else max_age_s
        async with self._lock:
            if time.monotonic() - self._loaded_at > max_age:
                self._endpoints = await self._list()
                self._loaded_at = time.monotonic()
            return list(self._endpoints)

    async def _list(self) -> list[transfer_pb2.Endpoint]:
        out: list[transfer_pb2.Endpoint] = []
        token = ""
        while True:
            resp = await self.stub.ListEndpoints(
                transfer_pb2.ListEndpointsRequest(page_size=1000, page_token=token), timeout=10
            )
            out.extend(resp.endpoints)
            token = resp.next_page_token
            if not token:
                return sorted(out, key=lambda e: e.name)

    async def resolve(self, hosts: tuple[str, ...] | list[str]) -> str | None:
        """The name of the endpoint matching any of `hosts`; refreshes once on a miss."""
        wanted = {h for h in hosts if h}
        if not wanted:
            return None
        for max_age in (None, 0.5):
            for ep in await self.all(max_age):
                if endpoint_hosts(ep) & wanted:
                    return ep.name
        return None

    async def exists(self, name: str) -> bool:
        for max_age in (None, 0.5):
            if any(ep.name == name for ep in await self.all(max_age)):
                return True
        return False
