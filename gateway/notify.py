"""Outbound webhooks on every mirror success or failure (like DTR's PUSH_MIRRORING).

Sends never block the pipeline: events go into a bounded queue (the oldest is dropped, with a
log line, when it is full) and a few sender tasks POST them with bounded, backed-off retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
from mirror.v1 import gateway_pb2

from gateway.runs import RunRecord
from servicekit.logs import context_id
from servicekit.retry import Backoff

log = logging.getLogger("gateway.notify")

EVENT_TYPE = "PUSH_MIRRORING"


def mirror_event(run: RunRecord) -> dict[str, Any]:
    """The JSON document sent for a finished run."""
    end = run.end_time or run.update_time
    return {
        "type": EVENT_TYPE,
        "policy": {"id": run.policy_id, "name": run.policy_name},
        "source": {
            "endpoint": run.src_endpoint,
            "repository": run.src_repository,
            "tag": run.src_tag,
        },
        "destination": {
            "endpoint": run.dst_endpoint,
            "repository": run.dst_repository,
            "tag": run.dst_tag,
        },
        "digest": run.src_digest,
        "state": gateway_pb2.Run.State.Name(run.state).removeprefix("STATE_"),  # type: ignore[arg-type]
        "message": run.message,
        "run_id": run.id,
        "transfer_id": run.transfer_id,
        "time": datetime.fromtimestamp(end, UTC).isoformat().replace("+00:00", "Z"),
    }


class Notifier:
    """POSTs mirror events to the configured URLs."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        attempts: int = 5,
        base_delay_s: float = 0.5,
        max_delay_s: float = 30.0,
        timeout_s: float = 5.0,
        queue_size: int = 1000,
        senders: int = 4,
    ) -> None:
        self.urls = list(urls)
        self.attempts = attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.timeout_s = timeout_s
        self.senders = senders
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(queue_size)
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self.delivered = 0
        self.failed = 0

    async def start(self) -> None:
        if not self.urls:
            return
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            headers={"User-Agent": "image-mirror-gateway"},
        )
        self._tasks = [asyncio.create_task(self._sender()) for _ in range(self.senders)]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    def send(self, run: RunRecord) -> None:
        """Queue the event for every URL; returns at once."""
        if not self.urls:
            return
        doc = mirror_event(run)
        for url in self.urls:
            if self._queue.full():
                dropped_url, dropped = self._queue.get_nowait()
                self.failed += 1
                log.warning(
                    "notification queue full: dropped run %s for %s",
                    dropped.get("run_id"),
                    dropped_url,
                )
            self._queue.put_nowait((url, doc))

    async def _sender(self) -> None:
        while True:
            url, doc = await self._queue.get()
            try:
                await self._deliver(url, doc)
            finally:
                self._queue.task_done()

    async def _deliver(self, url: str, doc: dict[str, Any]) -> None:
        assert self._session is not None
        context_id.set(str(doc.get("run_id") or "-"))
        for attempt in range(1, self.attempts + 1):
            try:
                async with self._session.post(url, json=doc) as resp:
                    if 200 <= resp.status < 300:
                        self.delivered += 1
                        return
                    problem = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt == self.attempts:
                break
            await Backoff(self.base_delay_s, self.max_delay_s).sleep(attempt - 1)
        self.failed += 1
        log.warning(
            "notification of run %s to %s failed after %d attempts: %s",
            doc.get("run_id"),
            url,
            self.attempts,
            problem,
        )

    async def drain(self) -> None:
        """Wait until every queued notification was delivered or given up (for tests)."""
        await self._queue.join()
