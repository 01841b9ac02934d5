"""Which transfer-service endpoint an event came from (by host:port and aliases), cached briefly;
and, for events no endpoint names, which endpoint is probably the same registry."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Iterable, Sequence

from mirror.v1 import gateway_pb2, transfer_pb2, transfer_pb2_grpc

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

    async def match(
        self, hosts: Sequence[str], miss_max_age_s: float = 0.5
    ) -> transfer_pb2.Endpoint | None:
        """The endpoint matching any of `hosts` (whatever its webhook secret); on a miss the
        list is read again unless it is younger than `miss_max_age_s` or was read after this
        call began (concurrent misses share one read)."""
        started = time.monotonic()
        wanted = {h for h in hosts if h}
        if not wanted:
            return None
        for max_age in (None, miss_max_age_s):
            if max_age is not None:
                max_age = max(max_age, time.monotonic() - started)
            ep = match_hosts(wanted, await self.all(max_age))
            if ep is not None:
                return ep
        return None

    async def resolve(self, hosts: Sequence[str]) -> str | None:
        """The name of the endpoint an event placed by its hosts belongs to.

        An endpoint with a webhook secret is never chosen by host: its events come only
        through its own authenticated path (/events/NAME), because anyone holding the shared
        secret could claim its hosts. (The webhook refuses such events on arrival; this
        catches those accepted while the endpoint list could not be read, or before the
        endpoint got its secret.)
        """
        ep = await self.match(hosts)
        return ep.name if ep is not None and not ep.has_webhook_secret else None

    async def exists(self, name: str) -> bool:
        for max_age in (None, 0.5):
            if any(ep.name == name for ep in await self.all(max_age)):
                return True
        return False


def match_hosts(
    hosts: Iterable[str], endpoints: Iterable[transfer_pb2.Endpoint]
) -> transfer_pb2.Endpoint | None:
    """The first endpoint whose URL host:port or aliases include one of `hosts`."""
    wanted = set(hosts)
    for ep in endpoints:
        if endpoint_hosts(ep) & wanted:
            return ep
    return None


def _split(hostport: str) -> tuple[str, str]:
    host, _, port = hostport.rpartition(":")
    return (host, port) if host else (hostport, "")


def is_local_name(host: str) -> bool:
    """A loopback name or address, or this machine's own host name."""
    host = host.strip("[]").lower()
    if host in ("localhost", "ip6-localhost", "ip6-loopback") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    own = socket.gethostname().lower()
    return host in (own, own.split(".", 1)[0])


def suggest_alias(
    hosts: Sequence[str], endpoints: Iterable[transfer_pb2.Endpoint]
) -> tuple[str, str] | None:
    """(endpoint name, alias) that would place events carrying `hosts`, or None.

    Only the one safe guess: the event names this machine by a local name (`localhost:5000`)
    and an endpoint names it by another (`http://127.0.0.1:5000`) on the same port; that is one
    registry under two names. Anything else needs the operator's knowledge.
    """
    eps = list(endpoints)
    for h in hosts:
        name, port = _split(h)
        if not port or not is_local_name(name):
            continue
        for ep in eps:
            for eh in sorted(endpoint_hosts(ep)):
                ename, eport = _split(eh)
                if eport == port and ename != name and is_local_name(ename):
                    return ep.name, h
    return None


def unplaced_with_suggestions(
    events: Iterable[gateway_pb2.UnplacedEvent],
    endpoints: Sequence[transfer_pb2.Endpoint],
    limit: int,
) -> list[gateway_pb2.UnplacedEvent]:
    """The groups that are still unplaced (an endpoint or alias added since would now place
    them: left out), each with the endpoint and alias suggest_alias finds, at most `limit`."""
    out = []
    for ev in events:
        if match_hosts(ev.hosts, endpoints) is not None:
            continue
        found = suggest_alias(list(ev.hosts), endpoints)
        if found is not None:
            ev.suggested_endpoint, ev.suggested_alias = found
        out.append(ev)
        if len(out) >= limit:
            break
    return out
