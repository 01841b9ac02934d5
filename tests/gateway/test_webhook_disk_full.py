"""A full data volume (a real, small tmpfs, filled up): /events answers 503 "no space left on
the data volume" without acknowledging, the gateway stays up, and the registry's retry is
recorded once space is back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from gateway.http import WebhookApp, start_http
from gateway.inbox import NO_SPACE, DataVolumeFull, Inbox, InboxEvent
from gateway.schema import open_database
from registry_testkit.images import ImageBuilder, push
from servicekit import metrics
from tests.gateway.test_webhook_parse import body
from tests.gateway.test_webhook_parse import push as push_event
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

CT = {"Content-Type": "application/vnd.docker.distribution.events.v1+json"}


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (root only: skipped where mounting is not allowed)."""
    mnt = tmp_path / "volume"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(volume: Path) -> Path:
    """Write a file until the volume has no space left; returns it (delete it to free)."""
    filler = volume / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (65536, 512):  # then whatever a smaller write still fits
            with contextlib.suppress(OSError):
                while f.write(b"\0" * size):
                    pass
    assert os.statvfs(volume).f_bavail == 0
    return filler


def _rejected(reason: str) -> float:
    return (
        metrics.REGISTRY.get_sample_value("mirror_events_rejected_total", {"reason": reason}) or 0.0
    )


async def _until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def served(small_volume: Path) -> AsyncIterator[tuple[Inbox, int]]:
    inbox = Inbox(open_database(small_volume / "data"))
    runner, port = await start_http(WebhookApp(inbox).make_app(), "127.0.0.1", 0)
    try:
        yield inbox, port
    finally:
        await runner.cleanup()
        inbox.db.close()


async def test_full_volume_is_503_and_the_registry_retry_lands_after(
    served: tuple[Inbox, int],
    small_volume: Path,
    registry_factory: RegistryFactory,
    images: ImageBuilder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    inbox, port = served
    base = f"http://127.0.0.1:{port}"
    reg = registry_factory(
        notifications=[
            {
                "name": "gw",
                "url": f"{base}/events",
                "timeout": "2s",
                "threshold": 3,
                "backoff": "200ms",
                "ignore": {"mediatypes": ["application/octet-stream"], "actions": ["pull"]},
            }
        ]
    )
    image = images.image("1.0")
    filler = fill(small_volume)
    before = _rejected("no_space")
    async with aiohttp.ClientSession() as http:
        r = await http.post(f"{base}/events", data=body(push_event("direct")), headers=CT)
        assert r.status == 503
        assert NO_SPACE in (await r.json())["error"]
        assert NO_SPACE in caplog.text
        assert inbox.get("direct") is None

        # A real push while the volume is full: every delivery is refused, none acknowledged.
        await asyncio.to_thread(push, image, reg, "team/full", "1.0")
        await _until(lambda: _rejected("no_space") >= before + 3, 60, "refused deliveries")
        assert inbox.depth() == 0
        r = await http.get(f"{base}/healthz")
        assert r.status == 200

        os.unlink(filler)
        # The registry still holds the event and delivers it now.
        await _until(lambda: inbox.depth() == 1, 60, "the retried event to be recorded")
        (ev,) = inbox.due(10, set())
        assert (ev.repository, ev.tag) == ("team/full", "1.0")


def test_no_space_is_also_what_notify_push_reports(small_volume: Path) -> None:
    """The inbox raises DataVolumeFull (RESOURCE_EXHAUSTED for gRPC callers) on a full volume,
    and works again once space is freed."""
    inbox = Inbox(open_database(small_volume / "data"))
    try:
        filler = fill(small_volume)
        ev = InboxEvent(id="n1", trigger=2, repository="a/b", tag="1", digest="", received_at=1.0)
        with pytest.raises(DataVolumeFull) as info:
            inbox.add_many([ev])
        assert NO_SPACE in info.value.message
        assert info.value.code.name == "RESOURCE_EXHAUSTED"
        os.unlink(filler)
        assert inbox.add_many([ev]) == [True]
    finally:
        inbox.db.close()
