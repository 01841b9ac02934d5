"""Retries, rate and concurrency limits of registry_client, through a fault proxy."""

from __future__ import annotations

import asyncio
import time

import pytest

from registry_client import RegistryClient, RegistryConfig, errors
from registry_client.transport import retry_after_seconds
from registry_testkit.faultproxy import FaultProxy
from registry_testkit.registry import RegistryProcess
from tests.support.images import ImageBuilder, push

pytestmark = pytest.mark.registry


def _cfg(proxy: FaultProxy, **kw) -> RegistryConfig:
    return RegistryConfig(url=proxy.url, backoff_base=0.01, **kw)


def test_retry_after_parses_seconds_and_dates() -> None:
    assert retry_after_seconds("3") == 3.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("garbage") is None
    assert 0 <= retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") <= 0.0 + 1e-9


async def test_429_with_retry_after_is_honoured(registry: RegistryProcess, fault_proxy) -> None:
    proxy = fault_proxy(registry.url)
    proxy.status(r"^/v2/$", 429, times=2, retry_after="1")
    async with RegistryClient(_cfg(proxy)) as rc:
        t0 = time.monotonic()
        await rc.ping()
        elapsed = time.monotonic() - t0
    assert len(proxy.requests("GET", r"^/v2/$")) == 3
    assert elapsed >= 1.9  # two waits of Retry-After: 1


async def test_429_forever_raises_too_many_requests(registry: RegistryProcess, fault_proxy) -> None:
    proxy = fault_proxy(registry.url)
    proxy.status(r"^/v2/$", 429, times=None, retry_after="0")
    async with RegistryClient(_cfg(proxy, max_attempts=3)) as rc:
        with pytest.raises(errors.TooManyRequests):
            await rc.ping()
    assert len(proxy.requests("GET", r"^/v2/$")) == 3


async def test_5xx_retried_but_400_and_404_not(registry: RegistryProcess, fault_proxy) -> None:
    proxy = fault_proxy(registry.url)
    proxy.status(r"/manifests/a$", 503, times=2)
    proxy.status(r"/manifests/b$", 400, times=1)
    async with RegistryClient(_cfg(proxy)) as rc:
        with pytest.raises(errors.NotFound):  # after two 503s, the real registry answers 404
            await rc.get_manifest("r/x", "a")
        with pytest.raises(errors.InvalidRequest):
            await rc.get_manifest("r/x", "b")
    assert len(proxy.requests("GET", r"/manifests/a$")) == 3
    assert len(proxy.requests("GET", r"/manifests/b$")) == 1


async def test_connection_refused_is_connect_error() -> None:
    from registry_testkit.ports import free_port

    cfg = RegistryConfig(url=f"http://127.0.0.1:{free_port()}", max_attempts=2, backoff_base=0.01)
    async with RegistryClient(cfg) as rc:
        with pytest.raises(errors.ConnectError):
            await rc.ping()


async def test_dropped_download_raises_connect_error_and_resumes_by_range(
    registry: RegistryProcess, images: ImageBuilder, fault_proxy
) -> None:
    img = images.image("v1", layers=[400_000])
    push(img, registry, "drop/app")
    layer = img.blobs[1]
    proxy = fault_proxy(registry.url)
    proxy.drop_mid_body(rf"/blobs/{layer.digest}$", times=1, after_bytes=150_000)
    got = b""
    async with RegistryClient(_cfg(proxy)) as rc:
        with pytest.raises(errors.ConnectError):
            async with rc.open_blob("drop/app", layer.digest) as body:
                async for chunk in body.iter_chunks(10_000):
                    got += chunk
        assert 0 < len(got) <= 150_000
        async with rc.open_blob("drop/app", layer.digest, offset=len(got)) as body:
            async for chunk in body.iter_chunks():
                got += chunk
    expected = img.layout.joinpath("blobs", "sha256", layer.digest[7:]).read_bytes()
    assert got == expected


async def test_concurrency_limit_bounds_requests_in_flight(
    registry: RegistryProcess, fault_proxy
) -> None:
    proxy = fault_proxy(registry.url)
    proxy.delay(r"/blobs/", 0.2)
    async with RegistryClient(_cfg(proxy, max_concurrency=2)) as rc:
        await asyncio.gather(*(rc.blob_size("c/x", "sha256:" + f"{i:064x}") for i in range(8)))
    assert proxy.max_in_flight == 2


async def test_requests_per_second_limit(registry: RegistryProcess, fault_proxy) -> None:
    proxy = fault_proxy(registry.url)
    async with RegistryClient(_cfg(proxy, requests_per_second=20)) as rc:
        t0 = time.monotonic()
        await asyncio.gather(*(rc.blob_size("c/x", "sha256:" + f"{i:064x}") for i in range(30)))
        elapsed = time.monotonic() - t0
    # Burst of 20, then 10 more at 20/s: at least ~0.5 s.
    assert elapsed >= 0.45
