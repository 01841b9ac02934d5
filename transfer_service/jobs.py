"""The durable job journal: every transfer is recorded before StartTransfer returns.

On PostgreSQL several workers share the table: a worker claims a runnable job under a lease
(`claim`, `FOR UPDATE SKIP LOCKED`), renews it while the copy runs (`renew`), and every write
of a running job is conditional on still owning it, so a worker that lost its lease changes
nothing. Lease times use the database's clock (`now_sql`): workers on several machines
compare them with one clock.
"""

from __future__ import annotations

import enum
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from servicekit.db import INTEGRITY_ERRORS, Database, Row, Tx
from servicekit.errors import invalid_argument, not_found
from transfer_service.engine.models import CopiedReferrer


class JobState(enum.StrEnum):
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"
    ERROR = "error"
    CANCELED = "canceled"
    # The source tag moved on before the destination tag was written (nothing tagged).
    SUPERSEDED = "superseded"

    @property
    def final(self) -> bool:
        return self in (JobState.DONE, JobState.ERROR, JobState.CANCELED, JobState.SUPERSEDED)


UNFINISHED = (JobState.WAITING, JobState.RUNNING)

# The database's clock in epoch seconds, per engine (lease times never mix machines' clocks).
_NOW = {
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
    "postgresql": "(EXTRACT(EPOCH FROM clock_timestamp())::float8)",
}


def effective_tag(spec: JobSpec) -> str:
    """The destination tag: the one asked for, else the source tag (a digest source: none)."""
    if spec.dst_tag:
        return spec.dst_tag
    return "" if ":" in spec.src_reference else spec.src_reference


@dataclass(frozen=True)
class JobSpec:
    """What to copy: the part of a job fixed at creation."""

    src_endpoint: str
    src_repository: str
    src_reference: str
    dst_endpoint: str
    dst_repository: str
    dst_tag: str = ""
    platforms: tuple[str, ...] = ()
    fail_if_tag_exists: bool = False
    # Write the destination tag only while this source tag still names the copied digest.
    source_tag: str = ""
    # Referrers to copy after the image: "signatures", "attestations", "sboms", "all".
    copy_referrers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Progress:
    """Counters of a job (the fields of the engine's CopyProgress the journal keeps)."""

    bytes_total: int = 0
    bytes_done: int = 0
    bytes_skipped: int = 0
    blobs_total: int = 0
    blobs_done: int = 0
    blobs_skipped: int = 0
    blobs_mounted: int = 0
    manifests_total: int = 0
    manifests_done: int = 0

    @classmethod
    def of(cls, p: object) -> Progress:
        """Copy the counters from any object that has them (e.g. a CopyProgress)."""
        return cls(**{k: int(getattr(p, k, 0) or 0) for k in _PROGRESS_FIELDS})


_PROGRESS_FIELDS = tuple(Progress.__dataclass_fields__)


@dataclass(frozen=True)
class JobRecord:
    id: str
    spec: JobSpec
    state: JobState
    idempotency_key: str = ""
    message: str = ""
    digest: str = ""
    media_type: str = ""
    progress: Progress = field(default_factory=Progress)
    attempts: int = 0
    create_time: float = 0.0
    start_time: float | None = None
    end_time: float | None = None
    seq: int = 0
    # When a rescheduled WAITING job is tried again (epoch seconds); None otherwise.
    next_attempt_time: float | None = None
    # `attempts` when the job was last rescheduled (its quick retries count from there) and
    # how often it was rescheduled (the long backoff grows with it).
    quick_base: int = 0
    reschedules: int = 0
    # Referrers copied after the image (set when the job is done).
    referrers: tuple[CopiedReferrer, ...] = ()
    # The worker that runs (or last ran) the job and until when its lease holds (database
    # clock); not part of what a client sees, so two snapshots differing only here are equal.
    lease_owner: str = field(default="", compare=False)
    lease_expires: float | None = field(default=None, compare=False)
    # CancelTransfer asked, on a replica other than the owner; the owner cancels.
    cancel_requested: bool = field(default=False, compare=False)

    @property
    def round_attempts(self) -> int:
        """Attempts since the job was last rescheduled (all attempts when it never was)."""
        return self.attempts - self.quick_base

    @property
    def rescheduled(self) -> bool:
        """Waiting for a rescheduled attempt (a quick retry's time is in next_attempt_time
        too, but is not a reschedule: no attempt ran since the reschedule set quick_base)."""
        return (
            self.state == JobState.WAITING
            and self.next_attempt_time is not None
            and self.reschedules > 0
            and self.attempts == self.quick_base
        )


@dataclass(frozen=True)
class Renewal:
    """What one lease renewal found: the jobs still owned, those asked to cancel, and how
    many workers are alive (heartbeat within a lease)."""

    owned: frozenset[str]
    cancel: frozenset[str]
    live_workers: int


_ACTIVE_SQL = "('waiting', 'running')"
# The older unfinished job that writes the same destination tag (jobs `j` and `o`).
_LANE_BEFORE = (
    "o.dst_endpoint = j.dst_endpoint AND o.dst_repository = j.dst_repository "
    f"AND o.lane_tag = j.lane_tag AND o.state IN {_ACTIVE_SQL} AND o.seq < j.seq"
)



def _runnable(alias: str, now: str) -> str:
    """SQL: the job (table alias `alias`, e.g. "j.") may be claimed now."""
    a = alias
    return (
        f"(({a}state = 'waiting' AND ({a}next_attempt_time IS NULL "
        f"OR {a}next_attempt_time <= {now})) OR ({a}state = 'running' "
        f"AND ({a}lease_expires IS NULL OR {a}lease_expires < {now})))"
    )


CountsHook = Callable[[dict[JobState, int]], None]


class Journal:
    """Transfer jobs in the service's database. Every method is one transaction.

    The methods block: code on the event loop calls them through `journal.db.run(...)`.
    `on_counts` is called with the number of waiting and running jobs inside every
    transaction that changes them (before it commits, so a gauge never lags a state a client
    can already read).
    """

    def __init__(self, db: Database, on_counts: CountsHook | None = None) -> None:
        self._db = db
        self.on_counts = on_counts
        # Plain FOR UPDATE: a read-modify-write of one row waits for another replica's.
        self._lock_row = " FOR UPDATE" if db.dialect == "postgresql" else ""

    @property
    def db(self) -> Database:
        return self._db

    @property
    def path(self) -> Path:
        """The SQLite database file (its folder is the data volume); PostgreSQL has none."""
        path: Path | None = getattr(self._db, "path", None)
        if path is None:
            raise AttributeError("the journal is in PostgreSQL: it has no file")
        return path

    @property
    def now_sql(self) -> str:
        """The database's clock, epoch seconds, as an SQL expression."""
        return _NOW[self._db.dialect]

    def _counted(self, c: Tx) -> None:
        if self.on_counts is None:
            return
        rows = c.execute(
            f"SELECT state, COUNT(*) AS n FROM jobs WHERE state IN {_ACTIVE_SQL} GROUP BY state"
        ).fetchall()
        counts = {s: 0 for s in UNFINISHED}
        counts.update({JobState(r["state"]): int(r["n"]) for r in rows})
        self.on_counts(counts)

    def create(self, spec: JobSpec, idempotency_key: str = "") -> tuple[JobRecord, bool]:
        """Record a new waiting job, or return the job already made with this key.

        Returns (job, created). The key lookup and the insert share one transaction and the
        key is UNIQUE, so concurrent calls with one key (even from two processes or replicas)
        make a single job.
        """
        job_id = str(uuid.uuid4())
        now = time.time()
        try:
            with self._db.transaction() as c:
                if idempotency_key:
                    existing = self._by_key(c, idempotency_key, spec)
                    if existing is not None:
                        return existing, False
                c.execute(
                    "INSERT INTO jobs (id, idempotency_key, state, src_endpoint, src_repository, "
                    "src_reference, dst_endpoint, dst_repository, dst_tag, platforms, "
                    "fail_if_tag_exists, create_time, source_tag, copy_referrers, lane_tag) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        job_id,
                        idempotency_key or None,
                        JobState.WAITING.value,
                        spec.src_endpoint,
                        spec.src_repository,
                        spec.src_reference,
                        spec.dst_endpoint,
                        spec.dst_repository,
                        spec.dst_tag,
                        json.dumps(list(spec.platforms)),
                        int(spec.fail_if_tag_exists),
                        now,
                        spec.source_tag,
                        json.dumps(list(spec.copy_referrers)),
                        effective_tag(spec),
                    ),
                )
                row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
                self._counted(c)
        except INTEGRITY_ERRORS:
            # Another replica inserted the key between our lookup and our insert.
            with self._db.transaction() as c:
                existing = self._by_key(c, idempotency_key, spec)
            if existing is None:
                raise
            return existing, False
        return _from_row(row), True

    def _by_key(self, c: Tx, key: str, spec: JobSpec) -> JobRecord | None:
        row = c.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
        if row is None:
            return None
        existing = _from_row(row)
        if existing.spec != spec:
            raise invalid_argument(
                "idempotency_key was already used for a different transfer",
                [
                    (
                        "idempotency_key",
                        f"already used by transfer {existing.id} with other parameters",
                    )
                ],
            )
        return existing

    def get(self, job_id: str) -> JobRecord:
        """The job; NOT_FOUND when there is none with this id."""
        row = self._db.query_one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            raise not_found(f"transfer {job_id!r} not found")
        return _from_row(row)

    def list_page(
        self,
        limit: int,
        *,
        before_seq: int = 0,
        states: Sequence[JobState] = (),
        destination_endpoint: str = "",
        repository: str = "",
    ) -> list[JobRecord]:
        """Newest first; `before_seq` continues a previous page."""
        where: list[str] = ["1=1"]
        params: list[object] = []
        if before_seq:
            where.append("seq < ?")
            params.append(before_seq)
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            params.extend(s.value for s in states)
        if destination_endpoint:
            where.append("dst_endpoint = ?")
            params.append(destination_endpoint)
        if repository:
            where.append("(src_repository = ? OR dst_repository = ?)")
            params.extend([repository, repository])
        rows = self._db.query(
            f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?",
            [*params, limit],
        )
        return [_from_row(r) for r in rows]

    def unfinished(self) -> list[JobRecord]:
        """Waiting and running jobs, oldest first."""
        rows = self._db.query(
            "SELECT * FROM jobs WHERE state IN (?, ?) ORDER BY seq", [s.value for s in UNFINISHED]
        )
        return [_from_row(r) for r in rows]

    def count_by_state(self) -> dict[JobState, int]:
        rows = self._db.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        return {JobState(r["state"]): int(r["n"]) for r in rows}

    # -- workers: claims, leases, heartbeats ----------------------------------------------

    def claim(
        self,
        owner: str,
        lease_seconds: float,
        *,
        avoid: Sequence[str] = (),
        then_avoid: Sequence[str] | None = None,
    ) -> JobRecord | None:
        """Take the oldest runnable job for worker `owner`, or None.

        Runnable: WAITING whose next_attempt_time has passed (or has none), or RUNNING whose
        lease expired (its worker died or stopped); never one whose destination tag an older
        unfinished job writes first, nor one read from a source endpoint in `avoid`. When
        none is found and `then_avoid` is given, the same with `then_avoid` instead.
        The job becomes RUNNING under a lease of `lease_seconds` (the attempt counted).
        Replicas claim different rows: SKIP LOCKED on PostgreSQL, one writer on SQLite.
        """
        now = self.now_sql
        runnable = _runnable("j.", now)
        rounds = [list(avoid)] + ([list(then_avoid)] if then_avoid is not None else [])
        with self._db.transaction() as c:
            for excluded in rounds:
                skip = (
                    f" AND j.src_endpoint NOT IN ({','.join('?' * len(excluded))})"
                    if excluded
                    else ""
                )
                row = c.execute(
                    f"SELECT j.id FROM jobs j WHERE {runnable}{skip} AND (j.lane_tag = '' "
                    f"OR NOT EXISTS (SELECT 1 FROM jobs o WHERE {_LANE_BEFORE})) "
                    f"ORDER BY j.seq LIMIT 1{self._db.for_update_skip_locked}",
                    excluded,
                ).fetchone()
                if row is not None:
                    break
            else:
                return None
            job_id = row["id"]
            n = c.execute(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, message = '', "
                "next_attempt_time = NULL, start_time = COALESCE(start_time, ?), "
                f"lease_owner = ?, lease_expires = {now} + ? WHERE id = ? "
                f"AND {_runnable('', now)}",
                (JobState.RUNNING.value, time.time(), owner, lease_seconds, job_id),
            ).rowcount
            if not n:
                return None
            got = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            self._counted(c)
        return _from_row(got)

    def renew(
        self, owner: str, job_ids: Sequence[str], lease_seconds: float, heartbeat: bool = True
    ) -> Renewal:
        """Extend the leases `owner` still holds on `job_ids`, record its heartbeat (unless
        `heartbeat` is false), and say which of them were asked to cancel and how many workers
        are alive."""
        now = self.now_sql
        owned: set[str] = set()
        cancel: set[str] = set()
        with self._db.transaction() as c:
            if job_ids:
                rows = c.execute(
                    f"UPDATE jobs SET lease_expires = {now} + ? WHERE lease_owner = ? "
                    f"AND state = ? AND id IN ({','.join('?' * len(job_ids))}) "
                    "RETURNING id, cancel_requested",
                    (lease_seconds, owner, JobState.RUNNING.value, *job_ids),
                ).fetchall()
                owned = {r["id"] for r in rows}
                cancel = {r["id"] for r in rows if r["cancel_requested"]}
            if not heartbeat:
                return Renewal(frozenset(owned), frozenset(cancel), 1)
            c.execute(
                f"INSERT INTO workers (id, heartbeat, started) VALUES (?, {now}, {now}) "
                "ON CONFLICT (id) DO UPDATE SET heartbeat = excluded.heartbeat",
                (owner,),
            )
            live = c.execute(
                f"SELECT COUNT(*) FROM workers WHERE heartbeat > {now} - ?", (lease_seconds,)
            ).fetchone()[0]
            # Rows of workers gone for an hour are only history.
            c.execute(f"DELETE FROM workers WHERE heartbeat < {now} - 3600")
            # Other replicas change the queue too: every replica's gauges follow it.
            self._counted(c)
        return Renewal(frozenset(owned), frozenset(cancel), max(1, int(live)))

    def release(self, owner: str | None) -> int:
        """End the leases of `owner` (every lease when None: the one process of an embedded
        database) on running jobs: another worker (or this one, restarted) takes them at once.
        Returns how many."""
        where = "state = ?" + (" AND lease_owner = ?" if owner is not None else "")
        params: list[object] = [JobState.RUNNING.value]
        if owner is not None:
            params.append(owner)
        return self._db.execute(f"UPDATE jobs SET lease_expires = 0 WHERE {where}", params)

    def leave(self, owner: str) -> None:
        """The worker stops: it no longer counts among the live workers."""
        self._db.execute("DELETE FROM workers WHERE id = ?", (owner,))

    def live_workers(self, within: float) -> int:
        row = self._db.query_one(
            f"SELECT COUNT(*) FROM workers WHERE heartbeat > {self.now_sql} - ?", (within,)
        )
        return int(row[0]) if row else 0

    def cancel_or_request(self, job_id: str) -> tuple[JobRecord, bool]:
        """Cancel a job no worker runs (WAITING, or RUNNING with an expired lease); for one
        that runs, set cancel_requested for its owner to act on. Returns (job, canceled now).
        NOT_FOUND when there is no such job."""
        now = self.now_sql
        with self._db.transaction() as c:
            n = c.execute(
                "UPDATE jobs SET state = ?, message = 'canceled by request', end_time = ?, "
                "next_attempt_time = NULL WHERE id = ? AND (state = 'waiting' OR "
                f"(state = 'running' AND (lease_expires IS NULL OR lease_expires < {now})))",
                (JobState.CANCELED.value, time.time(), job_id),
            ).rowcount
            if not n:
                c.execute(
                    "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND state = 'running'",
                    (job_id,),
                )
            else:
                self._counted(c)
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise not_found(f"transfer {job_id!r} not found")
        return _from_row(row), bool(n)

    def blocked(self, limit: int) -> list[tuple[JobRecord, str]]:
        """Runnable WAITING jobs, oldest first, each with the id of the older unfinished job
        that writes its destination tag first ('' when none)."""
        rows = self._db.query(
            "SELECT j.*, CASE WHEN j.lane_tag = '' THEN NULL ELSE (SELECT o.id FROM jobs o "
            f"WHERE {_LANE_BEFORE} ORDER BY o.seq LIMIT 1) END AS blocker FROM jobs j "
            "WHERE j.state = 'waiting' AND (j.next_attempt_time IS NULL OR "
            f"j.next_attempt_time <= {self.now_sql}) ORDER BY j.seq LIMIT ?",
            (limit,),
        )
        return [(_from_row(r), r["blocker"] or "") for r in rows]

    def note_waiting_many(self, notes: Sequence[tuple[str, str]]) -> list[JobRecord]:
        """Say why waiting jobs have not started yet: (job id, message) pairs. A message is
        kept when it is already said, and never written over a retry's (which says more).
        Returns the jobs whose message changed."""
        changed: list[JobRecord] = []
        with self._db.transaction() as c:
            for job_id, message in notes:
                n = c.execute(
                    "UPDATE jobs SET message = ? WHERE id = ? AND state = ? AND message != ? "
                    "AND (message = '' OR message LIKE 'waiting for %')",
                    (message, job_id, JobState.WAITING.value, message),
                ).rowcount
                if n:
                    row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
                    changed.append(_from_row(row))
        return changed

    # -- one job's life -------------------------------------------------------------------

    def start_attempt(self, job_id: str) -> JobRecord | None:
        """Mark the job running and count the attempt; None when it is no longer unfinished
        (no lease: for tools and tests; workers `claim`)."""
        now = time.time()
        with self._db.transaction() as c:
            n = c.execute(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, message = '', "
                "next_attempt_time = NULL, start_time = COALESCE(start_time, ?) "
                "WHERE id = ? AND state IN (?, ?)",
                (JobState.RUNNING.value, now, job_id, *[s.value for s in UNFINISHED]),
            ).rowcount
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if n:
                self._counted(c)
        return _from_row(row) if n else None

    def save_progress(self, job_id: str, progress: Progress, digest: str = "",
                      media_type: str = "", owner: str | None = None) -> bool:
        """Persist the counters of a running job (called periodically, not per callback);
        with `owner`, only while that worker holds the job. False when nothing was saved."""
        return bool(self._db.execute(
            "UPDATE jobs SET bytes_total=?, bytes_done=?, bytes_skipped=?, blobs_total=?, "
            "blobs_done=?, blobs_skipped=?, blobs_mounted=?, manifests_total=?, "
            "manifests_done=?, digest=CASE WHEN ?='' THEN digest ELSE ? END, "
            "media_type=CASE WHEN ?='' THEN media_type ELSE ? END WHERE id=? AND state=?"
            + (" AND lease_owner=?" if owner is not None else ""),
            (
                *_progress_values(progress),
                digest,
                digest,
                media_type,
                media_type,
                job_id,
                JobState.RUNNING.value,
                *((owner,) if owner is not None else ()),
            ),
        ))

    def note_waiting(self, job_id: str, message: str) -> JobRecord | None:
        """Say why a waiting job has not started yet; None when it is not waiting."""
        with self._db.transaction() as c:
            n = c.execute(
                "UPDATE jobs SET message = ? WHERE id = ? AND state = ? AND message != ?",
                (message, job_id, JobState.WAITING.value, message),
            ).rowcount
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _from_row(row) if n else None

    def retry_later(
        self, job_id: str, message: str, at: float | None = None, owner: str | None = None
    ) -> JobRecord | None:
        """Put a running job back to waiting after a retryable failure, to run again from
        `at` (epoch seconds; stored, so any worker retries it then); None if not running
        (or, with `owner`, no longer that worker's)."""
        return self._transition(
            job_id, (JobState.RUNNING,), JobState.WAITING, message, owner=owner,
            next_attempt_time=at,
        )

    def reschedule(
        self, job_id: str, message: str, at: float, owner: str | None = None
    ) -> JobRecord | None:
        """Put a running job back to waiting until `at` (epoch seconds), its quick retries
        spent; the time is stored, so it survives a restart. None if not running."""
        return self._transition(
            job_id, (JobState.RUNNING,), JobState.WAITING, message, owner=owner,
            next_attempt_time=at, rescheduled=True,
        )

    def finish(
        self,
        job_id: str,
        state: JobState,
        message: str = "",
        *,
        progress: Progress | None = None,
        digest: str = "",
        media_type: str = "",
        referrers: Sequence[CopiedReferrer] = (),
        owner: str | None = None,
    ) -> JobRecord | None:
        """Move an unfinished job to a final state; None when it was already final (or, with
        `owner`, is running under another worker's lease)."""
        assert state.final
        return self._transition(
            job_id, UNFINISHED, state, message, progress=progress, digest=digest,
            media_type=media_type, end=True, referrers=tuple(referrers), owner=owner,
        )

    def _transition(
        self,
        job_id: str,
        from_states: Sequence[JobState],
        to: JobState,
        message: str,
        *,
        progress: Progress | None = None,
        digest: str = "",
        media_type: str = "",
        end: bool = False,
        next_attempt_time: float | None = None,
        rescheduled: bool = False,
        referrers: tuple[CopiedReferrer, ...] = (),
        owner: str | None = None,
    ) -> JobRecord | None:
        with self._db.transaction() as c:
            row = c.execute(
                f"SELECT * FROM jobs WHERE id = ?{self._lock_row}", (job_id,)
            ).fetchone()
            if row is None:
                raise not_found(f"transfer {job_id!r} not found")
            job = _from_row(row)
            if job.state not in from_states:
                return None
            if owner is not None and job.state == JobState.RUNNING and job.lease_owner != owner:
                return None  # another worker holds it now: this one's outcome is void
            if job.cancel_requested and not to.final:
                # Asked to cancel while it ran: it does not go back to waiting.
                to, message, end, next_attempt_time = (
                    JobState.CANCELED, "canceled by request", True, None
                )
            job = replace(
                job,
                state=to,
                message=message,
                progress=progress or job.progress,
                digest=digest or job.digest,
                media_type=media_type or job.media_type,
                end_time=time.time() if end else job.end_time,
                next_attempt_time=next_attempt_time,
                referrers=referrers or job.referrers,
            )
            if rescheduled and next_attempt_time is not None:
                # Rescheduled: the next round of quick retries counts from here.
                job = replace(job, quick_base=job.attempts, reschedules=job.reschedules + 1)
            c.execute(
                "UPDATE jobs SET state=?, message=?, bytes_total=?, bytes_done=?, "
                "bytes_skipped=?, blobs_total=?, blobs_done=?, blobs_skipped=?, blobs_mounted=?, "
                "manifests_total=?, manifests_done=?, digest=?, media_type=?, end_time=?, "
                "next_attempt_time=?, quick_base=?, reschedules=?, referrers=? WHERE id=?",
                (
                    job.state.value,
                    job.message,
                    *_progress_values(job.progress),
                    job.digest,
                    job.media_type,
                    job.end_time,
                    job.next_attempt_time,
                    job.quick_base,
                    job.reschedules,
                    json.dumps([asdict(r) for r in job.referrers]),
                    job_id,
                ),
            )
            self._counted(c)
        return job


def _progress_values(p: Progress) -> tuple[int, ...]:
    return tuple(asdict(p)[k] for k in _PROGRESS_FIELDS)


def _from_row(row: Row) -> JobRecord:
    return JobRecord(
        id=row["id"],
        seq=row["seq"],
        spec=JobSpec(
            src_endpoint=row["src_endpoint"],
            src_repository=row["src_repository"],
            src_reference=row["src_reference"],
            dst_endpoint=row["dst_endpoint"],
            dst_repository=row["dst_repository"],
            dst_tag=row["dst_tag"],
            platforms=tuple(json.loads(row["platforms"])),
            fail_if_tag_exists=bool(row["fail_if_tag_exists"]),
            source_tag=row["source_tag"],
            copy_referrers=tuple(json.loads(row["copy_referrers"])),
        ),
        state=JobState(row["state"]),
        idempotency_key=row["idempotency_key"] or "",
        message=row["message"],
        digest=row["digest"],
        media_type=row["media_type"],
        progress=Progress(**{k: row[k] for k in _PROGRESS_FIELDS}),
        attempts=row["attempts"],
        create_time=row["create_time"],
        start_time=row["start_time"],
        end_time=row["end_time"],
        next_attempt_time=row["next_attempt_time"],
        quick_base=row["quick_base"],
        reschedules=row["reschedules"],
        referrers=tuple(CopiedReferrer(**r) for r in json.loads(row["referrers"])),
        lease_owner=row["lease_owner"],
        lease_expires=row["lease_expires"],
        cancel_requested=bool(row["cancel_requested"]),
    )
