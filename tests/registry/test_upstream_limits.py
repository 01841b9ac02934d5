"""Kind to upstreams: a 429 pauses every caller of the registry, announced pull quotas are
kept, anonymous pull tokens work. A real registry behind the fault proxy."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from registry_client import RegistryClient, RegistryConfig
from registry_client.errors import AuthenticationError, PermissionDenied, RetryAfterTooLong
from registry_client.pool import POOL
from registry_client.ratelimit import QuotaReading, read_quota
from registry_testkit.faultproxy import FaultProxy
from registry_testkit.images import ImageBuilder, push
from registry_testkit.registry import RegistryProcess
from registry_testkit.token_server import TokenServer, TokenUser
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

ProxyFn = Callable[[str], FaultProxy]


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for `cond` (polled), failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def timed(coro: object) -> float:
    t0 = time.monotonic()
    await coro  # type: ignore[misc]
    return time.monotonic() - t0


def shared(url: str, **kw: object) -> RegistryConfig:
    return RegistryConfig(url=url, shared_limits=True, backoff_base=0.05, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("http_date", [False, True])
async def test_429_retry_after_pauses_other_callers(
    registry: RegistryProcess, fault_proxy: ProxyFn, http_date: bool
) -> None:
    proxy = fault_proxy(registry.url)
    after = email.utils.formatdate(time.time() + 3, usegmt=True) if http_date else "2"
    rule = proxy.status(r"/manifests/", 429, times=1, retry_after=after, method="HEAD")
    async with (
        RegistryClient(shared(proxy.url)) as a,
        RegistryClient(shared(proxy.url)) as b,
        RegistryClient(RegistryConfig(url=proxy.url)) as private,
    ):
        first = asyncio.create_task(a.head_manifest("team/app", "1.0"))
        await until(lambda: rule.fired == 1 and a.transport.shared.pause.remaining() > 0)
        # Another caller of the same registry waits out the Retry-After; a client with
        # its own limits (the control) does not.
        assert await timed(private.ping()) < 1.0
        waited = await timed(b.ping())
        assert 1.0 <= waited <= 5.0 if http_date else 1.6 <= waited <= 4.0
        assert await first is None  # A retried after the pause: 404 -> None
    assert len(proxy.requests("GET", r"^/v2/$")) == 2


async def test_retry_after_over_the_cap_fails_that_request_and_pauses_no_one(
    registry: RegistryProcess, fault_proxy: ProxyFn
) -> None:
    proxy = fault_proxy(registry.url)
    proxy.status(r"/manifests/", 429, times=1, retry_after="600", method="HEAD")
    async with RegistryClient(shared(proxy.url)) as a, RegistryClient(shared(proxy.url)) as b:
        with pytest.raises(RetryAfterTooLong) as first:
            await a.head_manifest("team/app", "1.0")
        assert first.value.retry_after == pytest.approx(600, abs=2)
        assert "over the 60s cap" in str(first.value)
        # Not held for ten minutes: a job the scheduler brings back sooner may still try.
        assert await timed(b.ping()) < 1.0


def test_quota_headers_are_read() -> None:
    assert read_quota({"RateLimit-Limit": "100;w=21600", "RateLimit-Remaining": "76;w=21600"}) \
        == QuotaReading(76, 100, 21600.0, None)
    assert read_quota({"RateLimit-Remaining": "3", "RateLimit-Reset": "30"}) \
        == QuotaReading(3, None, None, 30.0)
    assert read_quota(
        {"RateLimit": '"default";r=5;t=7', "RateLimit-Policy": '"default";q=50;w=60'}
    ) == QuotaReading(5, 50, 60.0, 7.0)
    assert read_quota({"Content-Type": "x"}) is None
    assert read_quota({"RateLimit-Remaining": "lots"}) is None


async def test_remaining_zero_stops_manifest_gets_until_the_window(
    registry: RegistryProcess, fault_proxy: ProxyFn, images: ImageBuilder
) -> None:
    img = images.image("1.0", layers=[1000])
    push(img, registry, "team/app")
    proxy = fault_proxy(registry.url)
    # Docker Hub style: HEADs carry the headers but do not count.
    proxy.add_headers(
        r"/manifests/",
        {"RateLimit-Limit": "100;w=2", "RateLimit-Remaining": "0;w=2"},
        times=1,
        method="HEAD",
    )
    async with RegistryClient(shared(proxy.url)) as a, RegistryClient(shared(proxy.url)) as b:
        assert (await a.head_manifest("team/app", "1.0")) is not None
        t0 = time.monotonic()
        # HEADs and blob reads do not count: they go at once.
        assert (await b.head_manifest("team/app", "1.0")) is not None
        assert await b.blob_size("team/app", img.blobs[0].digest) is not None
        assert time.monotonic() - t0 < 1.0
        assert proxy.requests("GET", r"/manifests/") == []
        got = asyncio.create_task(b.get_manifest("team/app", "1.0"))
        await asyncio.sleep(1.0)  # within the window: the GET must not have been sent
        assert proxy.requests("GET", r"/manifests/") == []
        assert (await got).digest == img.digest
        assert time.monotonic() - t0 >= 1.7
        assert len(proxy.requests("GET", r"/manifests/")) == 1


async def test_exhausted_quota_with_a_long_window_fails_naming_it(
    registry: RegistryProcess, fault_proxy: ProxyFn, images: ImageBuilder
) -> None:
    img = images.image("1.0", layers=[1000])
    push(img, registry, "team/app")
    proxy = fault_proxy(registry.url)
    proxy.add_headers(
        r"/manifests/",
        {"RateLimit-Limit": "100;w=21600", "RateLimit-Remaining": "1;w=21600"},
        times=1,
        method="GET",
    )
    async with RegistryClient(shared(proxy.url)) as a, RegistryClient(shared(proxy.url)) as b:
        await a.get_manifest("team/app", "1.0")  # leaves 1; the reserve of 0 lets one more go
        await b.get_manifest("team/app", img.digest)
        with pytest.raises(RetryAfterTooLong) as err:
            await a.get_manifest("team/app", "1.0")
        msg = str(err.value)
        assert "100 manifest GETs per 21600s window" in msg and "RateLimit-Remaining" in msg
        assert err.value.retry_after > 21000
        assert len(proxy.requests("GET", r"/manifests/")) == 2
        assert await a.head_manifest("team/app", "1.0") is not None  # HEADs still go


async def test_anonymous_pull_token(
    tmp_path: Path, registry_factory: RegistryFactory, images: ImageBuilder
) -> None:
    with TokenServer(
        tmp_path / "token",
        users={"writer": TokenUser("writer-secret-1")},
        anonymous_actions=frozenset({"pull"}),
    ) as ts:
        reg = registry_factory(token_server=ts)
        img = images.image("1.0", layers=[5000])
        push(img, reg, "library/app", user="writer")
        cfg = shared(reg.url)
        async with RegistryClient(cfg) as a, RegistryClient(cfg) as b:
            m = await a.get_manifest("library/app", "1.0")
            assert m.digest == img.digest
            async with b.open_blob("library/app", img.blobs[0].digest) as blob:
                data = b"".join([c async for c in blob.iter_chunks()])
            assert data and len(data) == blob.size
            # No credentials anywhere: the GET flow, anonymous; one token for both clients.
            assert ts.requests["POST"] == 0
            assert ["repository:library/app:pull"] in ts.scopes_asked
            state = POOL.peek(cfg)
            assert state is not None and state.auth.token_fetches == 1
            with pytest.raises((AuthenticationError, PermissionDenied)):
                await a.start_upload("library/app")  # the anonymous token is pull only


async def test_quota_reserve_and_reset_header(
    registry: RegistryProcess, fault_proxy: ProxyFn, images: ImageBuilder
) -> None:
    img = images.image("1.0", layers=[1000])
    push(img, registry, "team/app")
    proxy = fault_proxy(registry.url)
    # Three left, two kept in reserve: one more GET may go, then wait for the reset (1 s).
    proxy.add_headers(
        r"/manifests/",
        {"RateLimit-Remaining": "3", "RateLimit-Reset": "1"},
        times=1,
        method="HEAD",
    )
    async with RegistryClient(shared(proxy.url, quota_reserve=2)) as rc:
        await rc.head_manifest("team/app", "1.0")
        t0 = time.monotonic()
        await rc.get_manifest("team/app", "1.0")
        assert time.monotonic() - t0 < 0.8
        await rc.get_manifest("team/app", "1.0")
        assert 0.5 <= time.monotonic() - t0 <= 3.0
        assert len(proxy.requests("GET", r"/manifests/")) == 2


async def test_clients_of_one_registry_share_one_http_session(registry: RegistryProcess) -> None:
    # Each job, poll and scan builds its own client; they must not each open connections.
    cfg = shared(registry.url)
    async with RegistryClient(cfg) as a:
        await a.ping()
        session = a.transport.session
    assert not session.closed  # closing a client only lets go of the registry's session
    async with RegistryClient(shared(registry.url)) as b, RegistryClient(
        RegistryConfig(url=registry.url)
    ) as private:
        await b.ping()
        await private.ping()
        assert b.transport.session is session
        assert private.transport.session is not session
        state = POOL.peek(cfg)
        assert state is not None and state.sessions_opened == 1
    POOL.forget(cfg)  # the endpoint was deleted: its session closes once nobody holds it
    await until(lambda: session.closed)
