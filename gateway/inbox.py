"""The durable event inbox: every actionable push is committed here before it is acknowledged."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from mirror.v1 import gateway_pb2

from servicekit import metrics
from servicekit.db import Database
from servicekit.errors import ApiError

PENDING = "pending"
DONE = "done"
UNKNOWN_SOURCE = "unknown_source"
FAILED = "failed"
# Refused on arrival (claimed the hosts of an endpoint that has a webhook secret on the shared
# path); stored under REFUSED_PREFIX + id so that a genuine delivery of that id is never taken
# for a duplicate of it.
REFUSED = "refused"
REFUSED_PREFIX = "refused/"

NO_SPACE = "no space left on the data volume"
# Below this many free bytes an I/O error while writing is taken for a full volume.
_LOW_SPACE = 1 << 20


class DataVolumeFull(ApiError):
    """The data volume is full: nothing was recorded (the caller must not acknowledge)."""

    def __init__(self, path: str) -> None:
        super().__init__(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{NO_SPACE} ({path}): the event was not recorded",
            reason="DATA_VOLUME_FULL",
        )


def is_volume_full(exc: BaseException, path: str) -> bool:
    """Whether `exc` (or what it interrupted) is SQLite failing for want of space."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, sqlite3.Error):
            code = getattr(seen, "sqlite_errorcode", None)
            if code == sqlite3.SQLITE_FULL:
                return True
            if code is not None and code & 0xFF == sqlite3.SQLITE_IOERR:
                try:
                    if shutil.disk_usage(path).free < _LOW_SPACE:
                        return True
                except OSError:
                    pass
        # A failing ROLLBACK after SQLITE_FULL hides the first error in __context__.
        seen = seen.__context__
    return False


Trigger = gateway_pb2.Run.Trigger


@dataclass(frozen=True)
class InboxEvent:
    """One push waiting to be (or already) acted on."""

    id: str
    trigger: int
    repository: str
    tag: str
    digest: str
    received_at: float
    # Source endpoint name when known at receive time (NotifyPush), else resolved from hosts.
    endpoint: str = ""
    hosts: tuple[str, ...] = ()
    media_type: str = ""
    state: str = PENDING
    message: str = ""
    attempts: int = 0


class Inbox:
    """Events stored in gateway.db; `wake` is set whenever new work arrives."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.wake = asyncio.Event()
        self.refresh_depth()

    def add_many(self, events: Sequence[InboxEvent]) -> list[bool]:
        """Insert events in one transaction; per event, True when new, False when a duplicate.

        The transaction commits with synchronous=FULL before this returns, so an event that
        was acknowledged survives a crash. Raises DataVolumeFull when there is no space.
        """
        added = self._insert(events, PENDING)
        dups = added.count(False)
        if dups:
            metrics.EVENTS_DEDUPLICATED.inc(dups)
        if any(added):
            self.refresh_depth()
            self.wake.set()
        return added

    def add_refused(self, events: Sequence[InboxEvent]) -> list[bool]:
        """Record events refused on arrival (state REFUSED, `message` says why), finished at
        once so that they are pruned with the rest; per event, True when new."""
        return self._insert(
            [dataclasses.replace(e, id=REFUSED_PREFIX + e.id) for e in events], REFUSED
        )

    def _insert(self, events: Sequence[InboxEvent], state: str) -> list[bool]:
        added: list[bool] = []
        done_at = None if state == PENDING else time.time()
        try:
            with self.db.transaction() as c:
                for e in events:
                    cur = c.execute(
                        "INSERT OR IGNORE INTO events (id, received_at, trigger, endpoint, hosts,"
                        " repository, tag, digest, media_type, state, message, done_at)"
                        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                        (
                            e.id,
                            e.received_at,
                            int(e.trigger),
                            e.endpoint,
                            json.dumps(list(e.hosts)),
                            e.repository,
                            e.tag,
                            e.digest,
                            e.media_type,
                            state,
                            e.message,
                            done_at,
                        ),
                    )
                    added.append(cur.rowcount == 1)
        except sqlite3.Error as exc:
            where = str(self.db.path.parent)
            if is_volume_full(exc, where):
                raise DataVolumeFull(where) from exc
            raise
        return added

    def unplaced(self, limit: int = 1000) -> list[gateway_pb2.UnplacedEvent]:
        """Events from registries no endpoint named, per (hosts, repository), newest first:
        count, the most recent tag and time (suggestions are added by the caller, who knows
        the endpoints)."""
        # SQLite takes bare columns (tag) from the row that holds the MAX().
        rows = self.db.query(
            "SELECT hosts, repository, tag, COUNT(*) AS n, MAX(received_at) AS last"
            " FROM events WHERE state = ? GROUP BY hosts, repository"
            " ORDER BY last DESC LIMIT ?",
            (UNKNOWN_SOURCE, limit),
        )
        out = []
        for r in rows:
            ev = gateway_pb2.UnplacedEvent(
                hosts=json.loads(r["hosts"]),
                repository=r["repository"],
                tag=r["tag"],
                count=int(r["n"]),
            )
            ev.last_time.FromNanoseconds(int(float(r["last"]) * 1e9))
            out.append(ev)
        return out

    def get(self, event_id: str) -> InboxEvent | None:
        row = self.db.query_one("SELECT * FROM events WHERE id = ?", (event_id,))
        return _row(row) if row else None

    def due(self, limit: int, exclude: set[str], now: float | None = None) -> list[InboxEvent]:
        """Pending events whose next attempt is due, oldest first, skipping those in flight."""
        now = time.time() if now is None else now
        rows = self.db.query(
            "SELECT * FROM events WHERE state = ? AND next_attempt_at <= ?"
            " ORDER BY received_at, id LIMIT ?",
            (PENDING, now, limit + len(exclude)),
        )
        return [e for e in map(_row, rows) if e.id not in exclude][:limit]

    def next_due_time(self) -> float | None:
        row = self.db.query_one(
            "SELECT MIN(next_attempt_at) AS t FROM events WHERE state = ?", (PENDING,)
        )
        return None if row is None or row["t"] is None else float(row["t"])

    def finish(self, event_id: str, state: str, message: str = "") -> None:
        """Mark an event acted on (done, unknown source or failed for good)."""
        self.db.execute(
            "UPDATE events SET state = ?, message = ?, done_at = ? WHERE id = ?",
            (state, message, time.time(), event_id),
        )
        self.refresh_depth()

    def retry_later(self, event_id: str, delay: float, message: str) -> None:
        self.db.execute(
            "UPDATE events SET attempts = attempts + 1, next_attempt_at = ?, message = ?"
            " WHERE id = ?",
            (time.time() + delay, message, event_id),
        )

    def has_pending(self, repository: str, tag: str) -> bool:
        """Whether a push of repository:tag is recorded but not yet acted on."""
        row = self.db.query_one(
            "SELECT 1 FROM events WHERE state = ? AND repository = ? AND tag = ? LIMIT 1",
            (PENDING, repository, tag),
        )
        return row is not None

    def depth(self) -> int:
        row = self.db.query_one("SELECT COUNT(*) AS n FROM events WHERE state = ?", (PENDING,))
        return int(row["n"]) if row else 0

    def counts(self) -> dict[str, int]:
        """Events by state (what /healthz reports)."""
        rows = self.db.query("SELECT state, COUNT(*) AS n FROM events GROUP BY state")
        return {r["state"]: int(r["n"]) for r in rows}

    def refresh_depth(self) -> None:
        metrics.INBOX_DEPTH.set(self.depth())

    def prune(self, older_than_s: float) -> int:
        """Forget finished events older than the dedup window (keeps the inbox small)."""
        return self.db.execute(
            "DELETE FROM events WHERE state != ? AND done_at IS NOT NULL AND done_at < ?",
            (PENDING, time.time() - older_than_s),
        )


def _row(row: sqlite3.Row) -> InboxEvent:
    return InboxEvent(
        id=row["id"],
        trigger=int(row["trigger"]),
        repository=row["repository"],
        tag=row["tag"],
        digest=row["digest"],
        received_at=float(row["received_at"]),
        endpoint=row["endpoint"],
        hosts=tuple(json.loads(row["hosts"])),
        media_type=row["media_type"],
        state=row["state"],
        message=row["message"],
        attempts=int(row["attempts"]),
    )
