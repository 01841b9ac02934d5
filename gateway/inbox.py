"""The durable event inbox: every actionable push is committed here before it is acknowledged."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import grpc
from mirror.v1 import gateway_pb2

from gateway.leases import ClaimTable, db_now
from servicekit import metrics
from servicekit.db import Database, Row
from servicekit.diskfull import NO_SPACE, is_volume_full
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

class DataVolumeFull(ApiError):
    """The data volume is full: nothing was recorded (the caller must not acknowledge)."""

    def __init__(self, path: str) -> None:
        super().__init__(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{NO_SPACE} ({path}): the event was not recorded",
            reason="DATA_VOLUME_FULL",
        )


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


# An event being acted on is claimed by one replica (lease renewed while it works).
CLAIMS = ClaimTable(
    "events", "id", "claimed_by", "claim_expires", f"state = '{PENDING}'", "received_at, id"
)


class Inbox:
    """Events stored in the gateway's database; `wake` is set whenever new work arrives here.

    Replicas share the table: an event accepted by any of them is stored once (its id is the
    key), and each pending event is acted on by the replica that claims it (`claim_due`).
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.wake = asyncio.Event()

    async def add(self, events: Sequence[InboxEvent]) -> list[bool]:
        """`add_many` off the event loop; wakes this replica's worker when any is new."""
        added = await self.db.run(self.add_many, events)
        if any(added):
            self.wake.set()
        return added

    def add_many(self, events: Sequence[InboxEvent]) -> list[bool]:
        """Insert events in one transaction; per event, True when new, False when a duplicate
        (also one another replica received first).

        The transaction commits (synchronous=FULL on SQLite) before this returns, so an event
        that was acknowledged survives a crash. Raises DataVolumeFull when there is no space.
        Blocking, and it does not wake the worker: code on the event loop awaits `add`.
        """
        added = self._insert(events, PENDING)
        dups = added.count(False)
        if dups:
            metrics.EVENTS_DEDUPLICATED.inc(dups)
        if any(added):
            self.refresh_depth()
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
                        "INSERT INTO events (id, received_at, trigger, endpoint, hosts,"
                        " repository, tag, digest, media_type, state, message, done_at)"
                        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (id) DO NOTHING",
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
        except Exception as exc:
            where = self._volume()
            if is_volume_full(exc, where):
                raise DataVolumeFull(where) from exc
            raise
        return added

    def _volume(self) -> str:
        """Where the events are written: the SQLite file's folder, or the PostgreSQL server."""
        path = getattr(self.db, "path", None)
        return str(path.parent) if path is not None else "the PostgreSQL server"

    def unplaced(self, limit: int = 1000) -> list[gateway_pb2.UnplacedEvent]:
        """Events from registries no endpoint named, per (hosts, repository), newest first:
        count, the most recent tag and time (suggestions are added by the caller, who knows
        the endpoints)."""
        # The tag of the newest event of each group (portable: no bare column beside MAX).
        rows = self.db.query(
            "SELECT g.hosts, g.repository, g.n, g.last, (SELECT e.tag FROM events e"
            " WHERE e.state = ? AND e.hosts = g.hosts AND e.repository = g.repository"
            " ORDER BY e.received_at DESC, e.id DESC LIMIT 1) AS tag"
            " FROM (SELECT hosts, repository, COUNT(*) AS n, MAX(received_at) AS last"
            " FROM events WHERE state = ? GROUP BY hosts, repository) g"
            " ORDER BY g.last DESC LIMIT ?",
            (UNKNOWN_SOURCE, UNKNOWN_SOURCE, limit),
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

    def claim_due(
        self, owner: str, lease_s: float, limit: int, exclude: Collection[str] = ()
    ) -> list[InboxEvent]:
        """Claim up to `limit` pending events that are due, oldest first, for `owner`.

        Skipped: events another replica holds a live claim on, and events of an image tag
        with another event in flight anywhere (one event per tag at a time, in arrival
        order, across replicas). Claimers take turns (an advisory lock on PostgreSQL, the
        write lock on SQLite), so two replicas never claim two events of one tag at once.
        """
        if limit <= 0:
            return []
        now = db_now(self.db)
        with self.db.transaction() as c:
            if self.db.dialect == "postgresql":
                c.execute("SELECT pg_advisory_xact_lock(hashtext('gateway.inbox.claim'))")
            rows = c.execute(
                f"SELECT * FROM events e WHERE e.state = ? AND e.next_attempt_at <= {now}"
                f" AND e.claim_expires <= {now} AND NOT EXISTS (SELECT 1 FROM events o"
                " WHERE o.repository = e.repository AND o.tag = e.tag AND o.state = ?"
                f" AND o.claim_expires > {now} AND o.id != e.id)"
                f" ORDER BY e.received_at, e.id LIMIT ?{self.db.for_update_skip_locked}",
                (PENDING, PENDING, limit + len(exclude) + 16),
            ).fetchall()
            out: list[InboxEvent] = []
            tags: set[tuple[str, str]] = set()
            for ev in map(_row, rows):
                key = (ev.repository, ev.tag)
                if ev.id in exclude or key in tags:
                    continue
                tags.add(key)
                out.append(ev)
                if len(out) == limit:
                    break
            if out:
                c.execute(
                    f"UPDATE events SET claimed_by = ?, claim_expires = {now} + ?"
                    f" WHERE id IN ({','.join('?' * len(out))})",
                    (owner, lease_s, *(e.id for e in out)),
                )
        return out

    def renew_claims(self, owner: str, ids: Sequence[str], lease_s: float) -> set[str]:
        """Extend our claims on events in flight; returns the ids still ours."""
        return CLAIMS.renew(self.db, owner, ids, lease_s)

    def release_claim(self, event_id: str, owner: str) -> None:
        """Give back our claim on one event (another replica, or we later, act on it)."""
        self.db.execute(
            "UPDATE events SET claimed_by = '', claim_expires = 0"
            " WHERE id = ? AND claimed_by = ?",
            (event_id, owner),
        )

    def release_claims(self, owner: str = "") -> None:
        """Drop `owner`'s claims (every claim when empty: SQLite at start, one process)."""
        with self.db.transaction() as c:
            CLAIMS.release(c, owner)

    def next_due_time(self) -> float | None:
        """When the next pending event becomes due or its claim runs out (the replica that
        held it died), on the database's clock."""
        row = self.db.query_one(
            "SELECT MIN(CASE WHEN claim_expires > next_attempt_at THEN claim_expires"
            " ELSE next_attempt_at END) AS t FROM events WHERE state = ?",
            (PENDING,),
        )
        return None if row is None or row["t"] is None else float(row["t"])

    def finish(self, event_id: str, state: str, message: str = "") -> None:
        """Mark an event acted on (done, unknown source or failed for good)."""
        self.db.execute(
            "UPDATE events SET state = ?, message = ?, done_at = ?, claimed_by = '',"
            " claim_expires = 0 WHERE id = ?",
            (state, message, time.time(), event_id),
        )
        self.refresh_depth()

    def retry_later(self, event_id: str, delay: float, message: str) -> None:
        """Try again in `delay` seconds (by whichever replica claims it then)."""
        self.db.execute(
            f"UPDATE events SET attempts = attempts + 1, next_attempt_at = {db_now(self.db)} + ?,"
            " message = ?, claimed_by = '', claim_expires = 0 WHERE id = ?",
            (delay, message, event_id),
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


def _row(row: Row) -> InboxEvent:
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
