"""The gateway's SQLite schema: the event inbox and the run history (one file, gateway.db)."""

from __future__ import annotations

from pathlib import Path

from servicekit.db import Database

MIGRATIONS = [
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
    # Scans a destination with scan_on_push owes a mirrored image; a row is written before the
    # run is recorded SUCCEEDED, so a crash never loses one.
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
    # Issue 9: a run's promotion chain (JSON list of [endpoint, repository, tag]) and hop
    # count; own pushes are recognised by their destination; each policy activation's
    # baseline of source tags (Reconcile never backfills what was already there).
    """
    ALTER TABLE runs ADD COLUMN provenance TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE runs ADD COLUMN hop INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX runs_destination ON runs(dst_endpoint, dst_repository, dst_tag, src_digest);
    CREATE TABLE baselines (
        policy_id TEXT NOT NULL,
        active_since REAL NOT NULL,
        taken_at REAL NOT NULL,
        PRIMARY KEY (policy_id, active_since)
    );
    CREATE TABLE baseline_tags (
        policy_id TEXT NOT NULL,
        active_since REAL NOT NULL,
        repository TEXT NOT NULL,
        tag TEXT NOT NULL,
        digest TEXT NOT NULL,
        PRIMARY KEY (policy_id, active_since, repository, tag, digest)
    )
    """,
]


def open_database(data_dir: str | Path) -> Database:
    """Open (creating and migrating) DATA/gateway.db."""
    return Database(Path(data_dir) / "gateway.db", MIGRATIONS)
