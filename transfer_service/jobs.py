"""The durable job journal: every transfer is recorded in SQLite before StartTransfer returns."""

from __future__ import annotations

import enum
import json
import sqlite3
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from servicekit.db import Database
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

    @property
    def round_attempts(self) -> int:
        """Attempts since the job was last rescheduled (all attempts when it never was)."""
        return self.attempts - self.quick_base


class Journal:
    """Transfer jobs in SQLite. Every method is one transaction."""

    def __init__(self, db: Database) -> None:
        self._db = db

    @property
    def path(self) -> Path:
        """The database file (its folder is the data volume)."""
        return self._db.path

    def create(self, spec: JobSpec, idempotency_key: str = "") -> tuple[JobRecord, bool]:
        """Record a new waiting job, or return the job already made with this key.

        Returns (job, created). The key lookup and the insert share one IMMEDIATE transaction,
        so concurrent calls with one key (even from two processes) make a single job.
        """
        job_id = str(uuid.uuid4())
        now = time.time()
        with self._db.transaction() as c:
            if idempotency_key:
                row = c.execute(
                    "SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,)
                ).fetchone()
                if row is not None:
                    existing = _from_row(row)
                    if existing.spec != spec:
                        raise invalid_argument(
                            "idempotency_key was already used for a different transfer",
                            [
                                (
                                    "idempotency_key",
                                    f"already used by transfer {existing.id} with other "
                                    "parameters",
                                )
                            ],
                        )
                    return existing, False
            c.execute(
                "INSERT INTO jobs (id, idempotency_key, state, src_endpoint, src_repository, "
                "src_reference, dst_endpoint, dst_repository, dst_tag, platforms, "
                "fail_if_tag_exists, create_time, source_tag, copy_referrers) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
                ),
            )
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _from_row(row), True

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
        """Waiting and running jobs, oldest first (what a restarted service resumes)."""
        rows = self._db.query(
            "SELECT * FROM jobs WHERE state IN (?, ?) ORDER BY seq", [s.value for s in UNFINISHED]
        )
        return [_from_row(r) for r in rows]

    def count_by_state(self) -> dict[JobState, int]:
        rows = self._db.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        return {JobState(r["state"]): r["n"] for r in rows}

    def start_attempt(self, job_id: str) -> JobRecord | None:
        """Mark the job running and count the attempt; None when it is no longer unfinished."""
        now = time.time()
        with self._db.transaction() as c:
            n = c.execute(
                "UPDATE jobs SET state = ?, attempts = attempts + 1, message = '', "
                "next_attempt_time = NULL, start_time = COALESCE(start_time, ?) "
                "WHERE id = ? AND state IN (?, ?)",
                (JobState.RUNNING.value, now, job_id, *[s.value for s in UNFINISHED]),
            ).rowcount
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _from_row(row) if n else None

    def save_progress(self, job_id: str, progress: Progress, digest: str = "",
                      media_type: str = "") -> None:
        """Persist the counters of a running job (called periodically, not per callback)."""
        self._db.execute(
            "UPDATE jobs SET bytes_total=?, bytes_done=?, bytes_skipped=?, blobs_total=?, "
            "blobs_done=?, blobs_skipped=?, blobs_mounted=?, manifests_total=?, "
            "manifests_done=?, digest=CASE WHEN ?='' THEN digest ELSE ? END, "
            "media_type=CASE WHEN ?='' THEN media_type ELSE ? END WHERE id=? AND state=?",
            (
                *_progress_values(progress),
                digest,
                digest,
                media_type,
                media_type,
                job_id,
                JobState.RUNNING.value,
            ),
        )

    def note_waiting(self, job_id: str, message: str) -> JobRecord | None:
        """Say why a waiting job has not started yet; None when it is not waiting."""
        with self._db.transaction() as c:
            n = c.execute(
                "UPDATE jobs SET message = ? WHERE id = ? AND state = ? AND message != ?",
                (message, job_id, JobState.WAITING.value, message),
            ).rowcount
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _from_row(row) if n else None

    def retry_later(self, job_id: str, message: str) -> JobRecord | None:
        """Put a running job back to waiting after a retryable failure; None if not running."""
        return self._transition(job_id, (JobState.RUNNING,), JobState.WAITING, message)

    def reschedule(self, job_id: str, message: str, at: float) -> JobRecord | None:
        """Put a running job back to waiting until `at` (epoch seconds), its quick retries
        spent; the time is stored, so it survives a restart. None if not running."""
        return self._transition(
            job_id, (JobState.RUNNING,), JobState.WAITING, message, next_attempt_time=at
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
    ) -> JobRecord | None:
        """Move an unfinished job to a final state; None when it was already final."""
        assert state.final
        return self._transition(
            job_id, UNFINISHED, state, message, progress=progress, digest=digest,
            media_type=media_type, end=True, referrers=tuple(referrers),
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
        referrers: tuple[CopiedReferrer, ...] = (),
    ) -> JobRecord | None:
        with self._db.transaction() as c:
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise not_found(f"transfer {job_id!r} not found")
            job = _from_row(row)
            if job.state not in from_states:
                return None
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
            if next_attempt_time is not None:
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
        return job


def _progress_values(p: Progress) -> tuple[int, ...]:
    return tuple(asdict(p)[k] for k in _PROGRESS_FIELDS)


def _from_row(row: sqlite3.Row) -> JobRecord:
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
    )
