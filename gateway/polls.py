"""Poll history and the tag -> digest each scheduled policy saw last (the gateway's database)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp
from mirror.v1 import gateway_pb2

from servicekit.db import Database, Row
from servicekit.paging import decode_token, encode_token, page_size

_COUNTERS = (
    "tags_listed",
    "tags_changed",
    "tags_copied",
    "tags_skipped",
    "tags_failed",
    "tags_deleted",
    "requests",
)


@dataclass
class PollRecord:
    id: str
    policy_id: str
    start_time: float
    end_time: float | None = None
    tags_listed: int = 0
    tags_changed: int = 0
    tags_copied: int = 0
    tags_skipped: int = 0
    tags_failed: int = 0
    tags_deleted: int = 0
    requests: int = 0
    message: str = ""

    def to_proto(self) -> gateway_pb2.Poll:
        p = gateway_pb2.Poll(
            id=self.id,
            policy_id=self.policy_id,
            message=self.message,
            **{k: getattr(self, k) for k in _COUNTERS},
        )
        p.start_time.CopyFrom(_ts(self.start_time))
        if self.end_time is not None:
            p.end_time.CopyFrom(_ts(self.end_time))
        return p


def _ts(t: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts


def _poll(row: Row) -> PollRecord:
    return PollRecord(**{k: row[k] for k in row.keys() if k != "seq"})  # noqa: SIM118


class PollStore:
    """Schedules, polls and last-seen digests of scheduled policies."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- schedule
    def next_time(self, policy_id: str, schedule: str) -> float | None:
        """When the policy polls next, if planned for this schedule (a changed one replans)."""
        row = self.db.query_one(
            "SELECT next_time FROM poll_schedule WHERE policy_id = ? AND schedule = ?",
            (policy_id, schedule),
        )
        return float(row["next_time"]) if row else None

    def plan(self, policy_id: str, schedule: str, next_time: float) -> None:
        self.db.execute(
            "INSERT INTO poll_schedule (policy_id, schedule, next_time) VALUES (?, ?, ?)"
            " ON CONFLICT(policy_id) DO UPDATE SET schedule = excluded.schedule,"
            " next_time = excluded.next_time",
            (policy_id, schedule, next_time),
        )

    def planned(self, policy_id: str) -> float | None:
        row = self.db.query_one(
            "SELECT next_time FROM poll_schedule WHERE policy_id = ?", (policy_id,)
        )
        return float(row["next_time"]) if row else None

    # -- polls
    def start(self, policy_id: str) -> PollRecord:
        rec = PollRecord(id=uuid.uuid4().hex, policy_id=policy_id, start_time=time.time())
        self.db.execute(
            "INSERT INTO polls (id, policy_id, start_time) VALUES (?, ?, ?)",
            (rec.id, rec.policy_id, rec.start_time),
        )
        return rec

    def finish(self, rec: PollRecord) -> None:
        rec.end_time = time.time()
        sets = ", ".join(f"{k} = ?" for k in _COUNTERS)
        self.db.execute(
            f"UPDATE polls SET end_time = ?, message = ?, {sets} WHERE id = ?",
            (rec.end_time, rec.message, *(getattr(rec, k) for k in _COUNTERS), rec.id),
        )

    def last(self, policy_id: str) -> PollRecord | None:
        row = self.db.query_one(
            "SELECT * FROM polls WHERE policy_id = ? ORDER BY seq DESC LIMIT 1", (policy_id,)
        )
        return _poll(row) if row else None

    def page(self, policy_id: str, size: int, token: str) -> tuple[list[PollRecord], str]:
        """Newest first; returns (polls, next_page_token)."""
        n = page_size(size)
        state = decode_token(token, expect={"policy_id": policy_id})
        params: list[object] = [policy_id]
        where = "policy_id = ?"
        if "before" in state:
            where += " AND seq < ?"
            params.append(int(str(state["before"])))
        rows = self.db.query(
            f"SELECT * FROM polls WHERE {where} ORDER BY seq DESC LIMIT ?", (*params, n + 1)
        )
        nxt = ""
        if len(rows) > n:
            rows = rows[:n]
            nxt = encode_token({"policy_id": policy_id, "before": int(rows[-1]["seq"])})
        return [_poll(r) for r in rows], nxt

    # -- last seen digests
    def seen(self, policy_id: str, repository: str) -> dict[str, tuple[str, bool]]:
        """tag -> (digest, whether the policy's rule matched it) at the last poll."""
        rows = self.db.query(
            "SELECT tag, digest, matched FROM poll_tags WHERE policy_id = ? AND repository = ?",
            (policy_id, repository),
        )
        return {str(r["tag"]): (str(r["digest"]), bool(r["matched"])) for r in rows}

    def repositories(self, policy_id: str) -> list[str]:
        rows = self.db.query(
            "SELECT DISTINCT repository FROM poll_tags WHERE policy_id = ?", (policy_id,)
        )
        return [str(r["repository"]) for r in rows]

    def remember(
        self, policy_id: str, repository: str, tag: str, digest: str, matched: bool
    ) -> None:
        self.db.execute(
            "INSERT INTO poll_tags (policy_id, repository, tag, digest, matched)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT(policy_id, repository, tag)"
            " DO UPDATE SET digest = excluded.digest, matched = excluded.matched",
            (policy_id, repository, tag, digest, int(matched)),
        )

    def forget(self, policy_id: str, repository: str, tag: str) -> None:
        self.db.execute(
            "DELETE FROM poll_tags WHERE policy_id = ? AND repository = ? AND tag = ?",
            (policy_id, repository, tag),
        )
