"""gateway.db written by the release before this one (schema version 2, verbatim) opens with
today's schema: every event, run and owed scan is kept, and the new columns read as the
behaviour those rows had (no provenance, a copy, no cause)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from mirror.v1 import gateway_pb2

from gateway.inbox import Inbox
from gateway.runs import RunStore
from gateway.schema import MIGRATIONS, open_database

Run = gateway_pb2.Run

# gateway/schema.py MIGRATIONS at d64404e (the commit before issues 9-13), verbatim.
OLD_MIGRATIONS = [
    """
    CREATE TABLE events (
        id TEXT PRIMARY KEY,
        received_at REAL NOT NULL,
        trigger INTEGER NOT NULL,
        endpoint TEXT NOT NULL DEFAULT '',
        hosts TEXT NOT NULL DEFAULT '[]',
        repository TEXT NOT NULL,
        tag TEXT NOT NULL,
        digest TEXT NOT NULL DEFAULT '',
        media_type TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL,
        message TEXT NOT NULL DEFAULT '',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL DEFAULT 0,
        done_at REAL
    );
    CREATE INDEX events_pending ON events(state, next_attempt_at, received_at);
    CREATE TABLE runs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        policy_id TEXT NOT NULL,
        policy_name TEXT NOT NULL DEFAULT '',
        event_id TEXT NOT NULL,
        trigger INTEGER NOT NULL,
        src_endpoint TEXT NOT NULL,
        src_repository TEXT NOT NULL,
        src_tag TEXT NOT NULL,
        src_digest TEXT NOT NULL DEFAULT '',
        dst_endpoint TEXT NOT NULL DEFAULT '',
        dst_repository TEXT NOT NULL DEFAULT '',
        dst_tag TEXT NOT NULL DEFAULT '',
        state INTEGER NOT NULL,
        message TEXT NOT NULL DEFAULT '',
        transfer_id TEXT NOT NULL DEFAULT '',
        create_time REAL NOT NULL,
        update_time REAL NOT NULL,
        end_time REAL,
        UNIQUE (event_id, policy_id)
    );
    CREATE INDEX runs_policy ON runs(policy_id, seq);
    CREATE INDEX runs_state ON runs(state);
    CREATE INDEX runs_source ON runs(policy_id, src_endpoint, src_repository, src_tag)
    """,
    """
    CREATE TABLE destination_scans (
        run_id TEXT PRIMARY KEY,
        endpoint TEXT NOT NULL,
        repository TEXT NOT NULL,
        digest TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        message TEXT NOT NULL DEFAULT '',
        create_time REAL NOT NULL,
        end_time REAL
    );
    CREATE INDEX destination_scans_state ON destination_scans(state)
    """,
]
DIGEST = "sha256:" + "a" * 64


def old_database(data: Path) -> None:
    data.mkdir(parents=True)
    conn = sqlite3.connect(data / "gateway.db", isolation_level=None)
    for script in OLD_MIGRATIONS:
        conn.executescript(script)
    conn.execute(f"PRAGMA user_version={len(OLD_MIGRATIONS)}")
    now = time.time()
    conn.execute(
        "INSERT INTO events (id, received_at, trigger, endpoint, repository, tag, digest, state)"
        " VALUES ('ev-pending', ?, ?, 'dev', 'dev/website', '1.0-stable', ?, 'pending')",
        (now - 10, Run.TRIGGER_EVENT, DIGEST),
    )
    conn.execute(
        "INSERT INTO runs (id, policy_id, policy_name, event_id, trigger, src_endpoint,"
        " src_repository, src_tag, src_digest, dst_endpoint, dst_repository, dst_tag, state,"
        " message, transfer_id, create_time, update_time, end_time) VALUES ('run-1', 'pol-1',"
        " 'to-qa', 'ev-old', ?, 'dev', 'dev/website', '0.9-stable', ?, 'qa', 'qa/website',"
        " '0.9-stable', ?, 'mirrored', 'tr-1', ?, ?, ?)",
        (Run.TRIGGER_EVENT, DIGEST, Run.STATE_SUCCEEDED, now - 100, now - 90, now - 90),
    )
    conn.execute(
        "INSERT INTO destination_scans (run_id, endpoint, repository, digest, state,"
        " create_time) VALUES ('run-1', 'qa', 'qa/website', ?, 'pending', ?)",
        (DIGEST, now - 90),
    )
    conn.close()


def test_an_old_gateway_database_keeps_every_row(tmp_path: Path) -> None:
    data = tmp_path / "data"
    old_database(data)
    db = open_database(data)
    try:
        assert db.schema_version == len(MIGRATIONS) > len(OLD_MIGRATIONS)
        runs = RunStore(db)
        old = runs.get("run-1")
        assert old is not None
        msg = old.to_proto()
        assert (msg.state, msg.policy_name, msg.source.reference) == (
            Run.STATE_SUCCEEDED, "to-qa", "0.9-stable")
        assert (msg.destination.repository, msg.destination_tag) == ("qa/website", "0.9-stable")
        assert msg.transfer_id == "tr-1" and msg.source_digest == DIGEST
        # The new columns say what the old run was: a copy, reached by no chain.
        assert list(msg.provenance) == [] and msg.hop == 0
        assert msg.action == Run.ACTION_COPY and msg.cause == "" and msg.poll_id == ""
        # Old runs serve the new lookups: its destination push is recognised as ours, and it
        # is the copy a deletion would remove.
        ours = runs.made_by_us("qa", "qa/website", "0.9-stable", DIGEST)
        copy = runs.last_copy("pol-1", "dev", "dev/website", "0.9-stable")
        assert ours is not None and ours.id == "run-1"
        assert copy is not None and copy.id == "run-1"
        assert runs.policy_status("pol-1").runs_succeeded == 1
        # The pending event is still due, and the owed scan still owed.
        (due,) = Inbox(db).due(10, set())
        assert (due.id, due.repository, due.tag) == ("ev-pending", "dev/website", "1.0-stable")
        row = db.query_one("SELECT state FROM destination_scans WHERE run_id = 'run-1'")
        assert row is not None and row["state"] == "pending"
    finally:
        db.close()
