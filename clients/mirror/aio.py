"""The asyncio client: `connect(address, tls=..., token=...)` -> `AsyncClient`.

    from mirror.aio import connect
    async with connect("127.0.0.1:50051") as client:
        async for policy in client.policies.iter():
            print(policy.name)

Same methods as `mirror.client`, awaited; `iter*` and `watch` are async iterators.
Every method raises a `mirror.errors.MirrorError` subclass when the call fails.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import grpc
from google.protobuf import message as pb_message

from mirror import client as _sync
from mirror.channel import (
    DEFAULT_ADDRESS,
    ChannelPool,
    TlsArg,
    TlsOptions,
    aio_channel,
    auth_metadata,
)
from mirror.errors import from_rpc_error
from mirror.errors import rate_limit_wait as _retry_wait

__all__ = ["DEFAULT_ADDRESS", "AsyncClient", "TlsOptions", "connect"]

P = ParamSpec("P")
R = TypeVar("R")


class _Service:
    """The awaiting calls under a service facade; the facade methods are `mirror.client`'s,
    which build each request and return the call (see `mirror.client._Service`)."""

    def __init__(
        self, stub: Any, metadata: tuple[tuple[str, str], ...], timeout: float | None,
        rate_limit_wait: float = 0.0,
    ):
        self._stub = stub
        self._metadata = metadata
        self._timeout = timeout
        self._rate_limit_wait = rate_limit_wait

    async def _call(
        self, method: str, request: pb_message.Message, *, void: bool = False
    ) -> Any:
        """As `mirror.client`'s: rate-limit refusals retried within `rate_limit_wait`."""
        waited = 0.0
        while True:
            try:
                response = await getattr(self._stub, method)(
                    request, metadata=self._metadata, timeout=self._timeout
                )
            except grpc.RpcError as err:
                error = from_rpc_error(err)
                delay = _retry_wait(error, self._rate_limit_wait - waited)
                if delay is None:
                    raise error from None
                await asyncio.sleep(delay)
                waited += delay
                continue
            return None if void else response

    async def _then(self, result: Awaitable[Any], fn: Callable[[Any], Any]) -> Any:
        """`fn` applied to the awaited call; `fn`'s own result is awaited when it is a call."""
        out = fn(await result)
        return await out if inspect.isawaitable(out) else out

    async def _stream(self, method: str, request: pb_message.Message) -> AsyncIterator[Any]:
        call = getattr(self._stub, method)(request, metadata=self._metadata)
        try:
            async for item in call:
                yield item
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        finally:
            call.cancel()

    async def _pages(
        self, list_page: Callable[..., Awaitable[Any]], items: str, **query: Any
    ) -> AsyncIterator[Any]:
        """Every item of every page: `await list_page(page_token=..., **query)` until no next
        token."""
        token = ""
        while True:
            page = await list_page(page_token=token, **query)
            for item in getattr(page, items):
                yield item
            token = page.next_page_token
            if not token:
                return


def _awaited(
    method: Callable[Concatenate[Any, P], R],
) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]:
    """The asyncio twin of a blocking facade method: same parameters and docstring, awaited.

    The blocking method runs on this module's `_Service`, so its `self._call(...)` is a
    coroutine, which is awaited here.
    """

    @functools.wraps(method)
    async def call(self: Any, *args: P.args, **kwargs: P.kwargs) -> R:
        return await cast(Awaitable[R], method(self, *args, **kwargs))

    return call


def _iterated(
    method: Callable[Concatenate[Any, P], Iterator[R]],
) -> Callable[Concatenate[Any, P], AsyncIterator[R]]:
    """The asyncio twin of a blocking `iter*`/`watch` method: on this module's `_Service` its
    `self._pages(...)`/`self._stream(...)` already is an async iterator."""
    return cast(Callable[Concatenate[Any, P], AsyncIterator[R]], method)


class Policies(_Service):
    """PolicyService: policies, rule validation and evaluation."""

    # The client's gateway facade, for Save & Apply (set by AsyncClient).
    _gateway: Gateway | None = None
    _apply_created = _sync.Policies._apply_created
    create = _awaited(_sync.Policies.create)
    get = _awaited(_sync.Policies.get)
    get_by_name = _awaited(_sync.Policies.get_by_name)
    list = _awaited(_sync.Policies.list)
    iter = _iterated(_sync.Policies.iter)
    update = _awaited(_sync.Policies.update)
    replace = _awaited(_sync.Policies.replace)
    delete = _awaited(_sync.Policies.delete)
    validate_rule = _awaited(_sync.Policies.validate_rule)
    evaluate = _awaited(_sync.Policies.evaluate)
    evaluate_rule = _awaited(_sync.Policies.evaluate_rule)
    get_fact_requirements = _awaited(_sync.Policies.get_fact_requirements)
    create_trusted_key = _awaited(_sync.Policies.create_trusted_key)
    get_trusted_key = _awaited(_sync.Policies.get_trusted_key)
    list_trusted_keys = _awaited(_sync.Policies.list_trusted_keys)
    iter_trusted_keys = _iterated(_sync.Policies.iter_trusted_keys)
    delete_trusted_key = _awaited(_sync.Policies.delete_trusted_key)


class Transfers(_Service):
    """TransferService: endpoints (registries and credentials) and transfer jobs."""

    create_endpoint = _awaited(_sync.Transfers.create_endpoint)
    get_endpoint = _awaited(_sync.Transfers.get_endpoint)
    list_endpoints = _awaited(_sync.Transfers.list_endpoints)
    iter_endpoints = _iterated(_sync.Transfers.iter_endpoints)
    update_endpoint = _awaited(_sync.Transfers.update_endpoint)
    delete_endpoint = _awaited(_sync.Transfers.delete_endpoint)
    test_connection = _awaited(_sync.Transfers.test_connection)
    stream_connection_test = _iterated(_sync.Transfers.stream_connection_test)
    list_repositories = _awaited(_sync.Transfers.list_repositories)
    iter_repositories = _iterated(_sync.Transfers.iter_repositories)
    start = _awaited(_sync.Transfers.start)
    get = _awaited(_sync.Transfers.get)
    list = _awaited(_sync.Transfers.list)
    iter = _iterated(_sync.Transfers.iter)
    watch = _iterated(_sync.Transfers.watch)
    cancel = _awaited(_sync.Transfers.cancel)


class Gateway(_Service):
    """GatewayService: push notifications, policy runs and status, apply and reconcile."""

    notify_push = _awaited(_sync.Gateway.notify_push)
    list_runs = _awaited(_sync.Gateway.list_runs)
    iter_runs = _iterated(_sync.Gateway.iter_runs)
    get_policy_status = _awaited(_sync.Gateway.get_policy_status)
    apply_policy = _awaited(_sync.Gateway.apply_policy)
    reconcile = _awaited(_sync.Gateway.reconcile)
    list_unplaced_events = _awaited(_sync.Gateway.list_unplaced_events)
    list_polls = _awaited(_sync.Gateway.list_polls)
    iter_polls = _iterated(_sync.Gateway.iter_polls)
    prune_policy = _awaited(_sync.Gateway.prune_policy)
    create_subscription = _awaited(_sync.Gateway.create_subscription)
    get_subscription = _awaited(_sync.Gateway.get_subscription)
    list_subscriptions = _awaited(_sync.Gateway.list_subscriptions)
    iter_subscriptions = _iterated(_sync.Gateway.iter_subscriptions)
    delete_subscription = _awaited(_sync.Gateway.delete_subscription)
    list_deliveries = _awaited(_sync.Gateway.list_deliveries)
    iter_deliveries = _iterated(_sync.Gateway.iter_deliveries)


class Scanner(_Service):
    """ScanService: components, licenses and vulnerabilities of images."""

    scan_image = _awaited(_sync.Scanner.scan_image)
    get_scan = _awaited(_sync.Scanner.get_scan)
    import_vulnerabilities = _awaited(_sync.Scanner.import_vulnerabilities)
    import_report = _awaited(_sync.Scanner.import_report)
    vulndb_status = _awaited(_sync.Scanner.vulndb_status)


class AsyncClient:
    """An asyncio connection to image-mirror: `.policies`, `.transfers`, `.gateway`, `.scanner`.

    Create it inside a running event loop (grpc.aio channels belong to one loop).
    `rate_limit_wait`: as `mirror.client.Client`'s.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        tls: TlsArg = False,
        token: str | None = None,
        timeout: float | None = 60.0,
        addresses: dict[str, str] | None = None,
        rate_limit_wait: float = 0.0,
    ) -> None:
        metadata = auth_metadata(token)
        self.address = address
        self._channels = ChannelPool(address, addresses, lambda addr: aio_channel(addr, tls))
        self.channel = self._channels.channel("policies")
        stub = self._channels.stub
        w = rate_limit_wait
        self.policies = Policies(stub("policies"), metadata, timeout, w)
        self.transfers = Transfers(stub("transfers"), metadata, timeout, w)
        self.gateway = Gateway(stub("gateway"), metadata, timeout, w)
        self.scanner = Scanner(stub("scanner"), metadata, timeout, w)
        self.policies._gateway = self.gateway  # Save & Apply calls both services
        self.metadata = metadata

    async def close(self) -> None:
        """Close every channel the client opened (calls in flight are cancelled)."""
        for ch in self._channels.opened():
            await ch.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def connect(
    address: str = DEFAULT_ADDRESS,
    *,
    tls: TlsArg = False,
    token: str | None = None,
    timeout: float | None = 60.0,
    addresses: dict[str, str] | None = None,
    rate_limit_wait: float = 0.0,
) -> AsyncClient:
    """Open an asyncio client (inside a running loop). `tls`: False, True or TlsOptions."""
    return AsyncClient(address, tls=tls, token=token, timeout=timeout, addresses=addresses,
                       rate_limit_wait=rate_limit_wait)
