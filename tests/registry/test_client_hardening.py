"""What the network says is not trusted: long Retry-After, stalled bodies, lost commit answers,
hostile error pages, URLs with userinfo; and every request says who we are (User-Agent)."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from registry_client import RegistryClient, RegistryConfig, errors
from registry_client.client import sha256_digest
from registry_client.config import USER_AGENT
from registry_client.excerpt import strip_userinfo
from registry_testkit.faultproxy import FaultProxy
from registry_testkit.ports import free_port
from registry_testkit.registry import RegistryProcess
from tests.registry.hostile import hostile_server
from tests.support.images import ImageBuilder, push

pytestmark = pytest.mark.registry


def _cfg(url: str, **kw) -> RegistryConfig:
    return RegistryConfig(url=url, backoff_base=0.01, **kw)


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_beyond_the_cap_fails_at_once_naming_the_wait(
    registry: RegistryProcess, fault_proxy, status: int
) -> None:
    proxy: FaultProxy = fault_proxy(registry.url)
    proxy.status(r"^/v2/$", status, times=None, retry_after="86400")
    async with RegistryClient(_cfg(proxy.url, retry_after_cap=60)) as rc:
        t0 = time.monotonic()
        with pytest.raises(errors.RetryAfterTooLong) as info:
            await rc.ping()
    assert time.monotonic() - t0 < 5
    assert len(proxy.requests("GET", r"^/v2/$")) == 1
    assert info.value.retry_after == 86400
    assert "86400s" in str(info.value) and "60s cap" in str(info.value)
    assert info.value.retryable  # for the job scheduler: later, not now


async def test_stalled_body_is_cut_by_the_idle_timeout(
    registry: RegistryProcess, images: ImageBuilder, fault_proxy
) -> None:
    img = images.image("v1", layers=[400_000])
    push(img, registry, "stall/app")
    layer = img.blobs[1]
    proxy: FaultProxy = fault_proxy(registry.url)
    proxy.stall(rf"/blobs/{layer.digest}$", times=1, after_bytes=100_000, seconds=120)
    got = 0
    async with RegistryClient(_cfg(proxy.url, idle_timeout=0.5)) as rc:
        t0 = time.monotonic()
        with pytest.raises(errors.Stalled):
            async with rc.open_blob("stall/app", layer.digest) as body:
                async for chunk in body.iter_chunks():
                    got += len(chunk)
        assert time.monotonic() - t0 < 10
        assert got == 100_000
        # The registry still serves the rest by Range from where it stalled.
        async with rc.open_blob("stall/app", layer.digest, offset=got) as body:
            async for chunk in body.iter_chunks():
                got += len(chunk)
    assert got == layer.size


async def test_lost_answer_to_a_blob_commit_is_resolved_by_head(
    registry: RegistryProcess, fault_proxy
) -> None:
    proxy: FaultProxy = fault_proxy(registry.url)
    # The registry commits the blob; the client never hears of it.
    proxy.drop_mid_body(r"/blobs/uploads/.+", times=1, method="PUT")
    data = b"x" * 5000
    digest = sha256_digest(data)
    async with RegistryClient(_cfg(proxy.url)) as rc:
        assert await rc.upload_blob("lost/app", digest, data) == digest
    # One upload session (aiohttp may resend the PUT once on its reused connection; that
    # finds the session committed and gone), and the HEAD that settled it.
    assert len(proxy.requests("POST", r"/blobs/uploads/")) == 1
    assert proxy.requests("HEAD", rf"/blobs/{digest}$")
    assert registry.blob_exists("lost/app", digest)


async def test_lost_commit_answer_with_the_blob_absent_stays_an_error(fault_proxy) -> None:
    # Nothing behind the upload location: the HEAD finds no blob, the error stands.
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            return web.Response(status=202, headers={"Location": "/v2/x/blobs/uploads/1"})
        if request.method == "PUT":
            assert request.transport is not None
            request.transport.abort()
            raise ConnectionResetError
        return web.Response(status=404)

    async with (
        hostile_server(handler) as server,
        RegistryClient(_cfg(server.url, max_attempts=1)) as rc,
    ):
        with pytest.raises(errors.ConnectError):
            await rc.upload_blob("x", sha256_digest(b"a"), b"a")
    methods = [s.method for s in server.seen]
    assert methods[0] == "POST" and methods[-1] == "HEAD"
    assert set(methods[1:-1]) == {"PUT"} and len(methods) <= 4  # aiohttp may resend once


async def test_lost_answers_to_a_manifest_push_are_resolved_by_head(
    registry: RegistryProcess, images: ImageBuilder, fault_proxy
) -> None:
    img = images.image("v1", layers=[1000])
    push(img, registry, "m/app")
    proxy: FaultProxy = fault_proxy(registry.url)
    async with RegistryClient(_cfg(proxy.url, max_attempts=2)) as rc:
        m = await rc.get_manifest("m/app", "v1")
        proxy.drop_mid_body(r"/manifests/", times=None, method="PUT")
        assert await rc.put_manifest("m/app", "v2", m.data, m.media_type) == m.digest
        assert len(proxy.requests("PUT", r"/manifests/v2$")) >= 2  # every answer lost
        assert proxy.requests("HEAD", r"/manifests/v2$")
        proxy.clear()
        assert (await rc.head_manifest("m/app", "v2")).digest == m.digest  # type: ignore[union-attr]


async def test_huge_hostile_error_page_becomes_a_short_clean_excerpt() -> None:
    page = "<html>\x1b[31mBad\x07 gateway\x00 " + "A" * 70_000 + "\nsecond line</html>"

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=400, text=page, content_type="text/html")

    async with (
        hostile_server(handler) as server,
        RegistryClient(_cfg(server.url, max_attempts=1)) as rc,
    ):
        with pytest.raises(errors.InvalidRequest) as info:
            await rc.get_manifest("team/app", "1.0")
    text = str(info.value)
    assert len(text) < 400
    assert "HTTP 400" in text and "Bad" in text
    assert not any(ord(c) < 32 or c == "\x7f" for c in text)
    assert "second line" not in text


async def test_json_error_codes_and_messages_are_bounded() -> None:
    body = (
        '{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown\\u001b[2J ' + "m" * 5000 + '",'
        '"detail":"' + "d" * 60_000 + '"}]}'
    )

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=404, text=body, content_type="application/json")

    async with hostile_server(handler) as server, RegistryClient(_cfg(server.url)) as rc:
        with pytest.raises(errors.NotFound) as info:
            await rc.get_manifest("team/app", "1.0")
    assert info.value.code == "MANIFEST_UNKNOWN"
    assert len(str(info.value)) < 400
    assert "\x1b" not in str(info.value)
    assert info.value.detail is None  # a 60 KB detail is not kept


def test_userinfo_in_a_url_is_never_echoed_nor_used() -> None:
    cfg = RegistryConfig(url="https://ci:hunter2@registry.example:5000")
    assert cfg.base_url == "https://registry.example:5000"
    assert "hunter2" not in repr(cfg).replace(cfg.url, "")  # only the field itself holds it
    with pytest.raises(ValueError) as info:
        RegistryConfig(url="ftp://ci:hunter2@registry.example")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://ci:hunter2@registry.example:5000/v2/", "https://registry.example:5000/v2/"),
        ("ci:hunter2@registry.example", "registry.example"),
        ("https://ci:hunt@er2@[::1", "https://[::1"),  # does not parse as a URL
        ("https://ci:hunter2@", "https://"),
        ("https://registry.example/a@b", "https://registry.example/a@b"),  # a path's @ stays
    ],
)
def test_strip_userinfo_also_without_a_scheme_or_a_valid_url(url: str, shown: str) -> None:
    assert strip_userinfo(url) == shown


async def test_connect_errors_name_no_userinfo() -> None:
    cfg = _cfg(f"http://ci:hunter2@127.0.0.1:{free_port()}", max_attempts=1)
    async with RegistryClient(cfg) as rc:
        with pytest.raises(errors.ConnectError) as info:
            await rc.ping()
    assert "hunter2" not in str(info.value)


async def test_every_request_carries_the_user_agent(
    registry: RegistryProcess, images: ImageBuilder, fault_proxy
) -> None:
    assert USER_AGENT.startswith("image-mirror/") and USER_AGENT != "image-mirror/"
    img = images.image("v1", layers=[2000])
    push(img, registry, "ua/app")
    proxy: FaultProxy = fault_proxy(registry.url)
    async with RegistryClient(_cfg(proxy.url)) as rc:
        await rc.ping()
        m = await rc.get_manifest("ua/app", "v1")
        await rc.head_manifest("ua/app", "v1")
        await rc.blob_size("ua/app", img.blobs[1].digest)
        async with rc.open_blob("ua/app", img.blobs[1].digest) as body:
            async for _ in body.iter_chunks():
                pass
        layer = img.blobs[1].digest
        data = (img.layout / "blobs" / "sha256" / layer.split(":")[1]).read_bytes()
        await rc.upload_blob("ua/copy", layer, data)
        await rc.mount_blob("ua/copy", img.blobs[0].digest, "ua/app")
        await rc.put_manifest("ua/copy", "v1", m.data, m.media_type)
        await rc.list_tags("ua/copy")
    assert len(proxy.user_agents) >= 10
    assert set(proxy.user_agents) == {USER_AGENT}


async def test_upload_to_a_registry_that_stops_reading_is_cut(
    registry: RegistryProcess, fault_proxy
) -> None:
    proxy: FaultProxy = fault_proxy(registry.url)
    # The upload session opens; then the registry takes no byte of the PATCH body.
    proxy.delay(r"/blobs/uploads/.+", 300, times=1, method="PATCH")
    source_waits = 0

    async def stream():
        nonlocal source_waits
        for _ in range(64):
            source_waits += 1
            yield b"z" * (1 << 20)

    async with RegistryClient(_cfg(proxy.url, idle_timeout=1.0)) as rc:
        up = await rc.start_upload("slow/app")
        t0 = time.monotonic()
        with pytest.raises(errors.Stalled) as info:
            await rc.upload_chunk(up, stream(), 64 << 20)
        assert time.monotonic() - t0 < 10
    assert "no bytes accepted for 1s" in str(info.value)
    assert source_waits < 64  # cut while writing, not after the whole body


async def test_slow_source_does_not_count_as_a_stalled_upload(
    registry: RegistryProcess, fault_proxy
) -> None:
    async def slow():
        for _ in range(3):
            await asyncio.sleep(0.6)  # the source is slow; the registry takes every byte
            yield b"y" * 1000

    async with RegistryClient(_cfg(registry.url, idle_timeout=0.5)) as rc:
        up = await rc.start_upload("slow/app")
        up = await rc.upload_chunk(up, slow(), 3000)
    assert up.offset == 3000


async def test_a_registry_that_never_answers_is_stalled_not_retried_for_minutes() -> None:
    over = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        await over.wait()  # connected, then nothing (until the test is over)
        return web.Response(status=200)

    async with (
        hostile_server(handler) as server,
        RegistryClient(_cfg(server.url, idle_timeout=0.5)) as rc,
    ):
        t0 = time.monotonic()
        try:
            with pytest.raises(errors.Stalled) as info:
                await rc.get_manifest("team/app", "1.0")
            assert time.monotonic() - t0 < 5
        finally:
            over.set()  # the server's shutdown waits for its handlers
    assert len(server.seen) == 1
    assert "no answer for 0.5s" in str(info.value)
