"""Outbound events, the one home: every final run that did something becomes an event for each
subscription that wants it (API subscriptions and the `--notify-url` flag alike).

Which runs: SUCCEEDED, FAILED and BLOCKED (a gate refused the image: worth telling). Not
NOT_MATCHED (the rule did not select the tag: nothing happened) nor SKIPPED (up to date,
superseded, overwrite never: nothing changed). Event type: TAG_DELETION for delete actions
(dry runs too), POLL_MIRRORING for runs started by a scheduled poll, PUSH_MIRRORING otherwise.

`send` never blocks the pipeline: it writes one durable delivery per subscription and wakes
the worker (gateway/deliveries.py), which POSTs with bounded, backed-off retries.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from mirror.v1 import gateway_pb2

from gateway.deliveries import DeliveryWorker
from gateway.runs import RunRecord
from gateway.schema import MIGRATIONS
from gateway.subscriptions import SecretCipher, SubscriptionStore
from servicekit.db import Database

log = logging.getLogger("gateway.notify")

Run = gateway_pb2.Run
EventType = gateway_pb2.EventType
NOTIFIED_STATES = frozenset({Run.STATE_SUCCEEDED, Run.STATE_FAILED, Run.STATE_BLOCKED})
_DELETIONS = frozenset({Run.ACTION_DELETE, Run.ACTION_DELETE_DRY_RUN})


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix)
    except ValueError:
        return str(value)


def event_type_of(run: RunRecord) -> int:
    """The outbound event type of a final run."""
    if run.action in _DELETIONS:
        return EventType.EVENT_TYPE_TAG_DELETION
    if run.trigger == Run.TRIGGER_SCHEDULE:
        return EventType.EVENT_TYPE_POLL_MIRRORING
    return EventType.EVENT_TYPE_PUSH_MIRRORING


def mirror_event(run: RunRecord, event_id: str = "") -> dict[str, Any]:
    """The JSON document sent for a finished run (docs/events.md)."""
    end = run.end_time or run.update_time
    etype = event_type_of(run)
    return {
        "id": event_id or uuid.uuid4().hex,
        "type": _enum_name(EventType, etype, "EVENT_TYPE_"),
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
        "previous_digest": run.previous_digest,
        "state": _enum_name(Run.State, run.state, "STATE_"),
        "action": _enum_name(Run.Action, run.action, "ACTION_"),
        "trigger": _enum_name(Run.Trigger, run.trigger, "TRIGGER_"),
        "cause": run.cause,
        "poll_id": run.poll_id,
        "message": run.message,
        "run_id": run.id,
        "transfer_id": run.transfer_id,
        "time": datetime.fromtimestamp(end, UTC).isoformat().replace("+00:00", "Z"),
    }


class Notifier:
    """Turns final runs into deliveries; owns the subscription store and the delivery worker.

    `urls` (--notify-url) become unsigned subscriptions to every type. Without `db` (tests,
    embedding) the store lives in memory and only those URLs exist.
    """

    def __init__(
        self,
        urls: Sequence[str] = (),
        *,
        db: Database | None = None,
        cipher: SecretCipher | None = None,
        attempts: int = 12,
        max_age_s: float = 24 * 3600.0,
        base_delay_s: float = 2.0,
        max_delay_s: float = 600.0,
        timeout_s: float = 10.0,
        queue_size: int = 1000,
        senders: int = 4,
        idle_s: float = 5.0,
    ) -> None:
        self._own_db = db is None
        self.db = db if db is not None else Database(":memory:", MIGRATIONS)
        self.store = SubscriptionStore(self.db, cipher)
        self.urls = list(urls)
        self._synced = False
        self.worker = DeliveryWorker(
            self.store,
            attempts=attempts,
            max_age_s=max_age_s,
            base_delay_s=base_delay_s,
            max_delay_s=max_delay_s,
            timeout_s=timeout_s,
            queue_size=queue_size,
            senders=senders,
            idle_s=idle_s,
        )

    @property
    def delivered(self) -> int:
        return self.worker.delivered

    @property
    def failed(self) -> int:
        return self.worker.failed

    async def sync_urls(self) -> None:
        """Make the --notify-url subscriptions those of the command line (once)."""
        if not self._synced:
            await self.db.run(self.store.sync_flag_urls, self.urls)
            self._synced = True

    async def start(self) -> None:
        """Sync the --notify-url subscriptions and start sending."""
        await self.sync_urls()
        await self.worker.start()

    async def run_sender(self) -> None:
        """Send deliveries until cancelled: the `deliveries` duty of one replica at a time
        (gateway/leases.py); the others only record them."""
        await self.worker.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.worker.stop()

    async def stop(self) -> None:
        await self.worker.stop()
        if self._own_db:
            self.db.close()

    async def send(self, run: RunRecord) -> None:
        """Record the run's event for every subscription that wants it (the sender finds
        the rows; nothing waits for the receivers)."""
        if run.state not in NOTIFIED_STATES:
            return
        etype = event_type_of(run)
        try:
            ids = await self.db.run(
                self.store.enqueue, etype, run.policy_id, run.id, mirror_event(run)
            )
        except Exception:
            # The run is recorded; losing its notification must not fail the pipeline.
            log.exception("recording the outbound event of run %s failed", run.id)
            return
        if ids:
            self.worker.wake()

    async def drain(self) -> None:
        """Wait until every recorded delivery was delivered or given up (for tests)."""
        await self.worker.drain()
