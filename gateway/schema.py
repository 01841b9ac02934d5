"""The gateway's schema: the event inbox, the run history and what hangs off them.

One SQLite file (DATA/gateway.db) by default, or the schema `gateway` in PostgreSQL
(`--database postgresql://...`), which replicas of the gateway share.
"""

from __future__ import annotations

from pathlib import Path

from servicekit.db import Database, Migration, MigrationStep, open_service_database, pg_ddl

SCHEMA = "gateway"

# Issue 12: outbound-event subscriptions (secret: Fernet token, empty for --notify-url
# ones) and one durable row per event and subscription: the exact body, and its attempts.
# `x''` is SQLite's empty blob; PostgreSQL reads it as a bit string, so it gets `''` (bytea).
_SUBSCRIPTIONS = """
    CREATE TABLE subscriptions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        url TEXT NOT NULL,
        event_types TEXT NOT NULL DEFAULT '[]',
        policy_id TEXT NOT NULL DEFAULT '',
        secret BLOB NOT NULL DEFAULT x'',
        create_time REAL NOT NULL,
        origin TEXT NOT NULL DEFAULT 'api'
    );
    CREATE TABLE deliveries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        subscription_id TEXT NOT NULL REFERENCES subscriptions(id) ON DELETE CASCADE,
        event_id TEXT NOT NULL,
        event_type INTEGER NOT NULL,
        run_id TEXT NOT NULL DEFAULT '',
        body BLOB NOT NULL,
        state INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        response_code INTEGER NOT NULL DEFAULT 0,
        message TEXT NOT NULL DEFAULT '',
        create_time REAL NOT NULL,
        last_attempt_time REAL,
        next_attempt_at REAL NOT NULL DEFAULT 0
    );
    CREATE INDEX deliveries_due ON deliveries(state, next_attempt_at);
    CREATE INDEX deliveries_subscription ON deliveries(subscription_id, seq)
    """

MIGRATIONS: list[MigrationStep] = [
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
    # Issue 12: scheduled polls (pull mirroring): when each policy polls next, what each poll
    # saw, the digest each source tag had at the last poll; a run's cause, previous digest,
    # action (copy or delete) and poll.
    """
    ALTER TABLE runs ADD COLUMN cause TEXT NOT NULL DEFAULT '';
    ALTER TABLE runs ADD COLUMN previous_digest TEXT NOT NULL DEFAULT '';
    ALTER TABLE runs ADD COLUMN action INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN poll_id TEXT NOT NULL DEFAULT '';
    CREATE TABLE poll_schedule (
        policy_id TEXT PRIMARY KEY,
        schedule TEXT NOT NULL,
        next_time REAL NOT NULL
    );
    CREATE TABLE polls (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        policy_id TEXT NOT NULL,
        start_time REAL NOT NULL,
        end_time REAL,
        tags_listed INTEGER NOT NULL DEFAULT 0,
        tags_changed INTEGER NOT NULL DEFAULT 0,
        tags_copied INTEGER NOT NULL DEFAULT 0,
        tags_skipped INTEGER NOT NULL DEFAULT 0,
        tags_failed INTEGER NOT NULL DEFAULT 0,
        tags_deleted INTEGER NOT NULL DEFAULT 0,
        requests INTEGER NOT NULL DEFAULT 0,
        message TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX polls_policy ON polls(policy_id, seq);
    CREATE TABLE poll_tags (
        policy_id TEXT NOT NULL,
        repository TEXT NOT NULL,
        tag TEXT NOT NULL,
        digest TEXT NOT NULL,
        matched INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (policy_id, repository, tag)
    )
    """,
    Migration(
        sqlite=_SUBSCRIPTIONS,
        postgresql=pg_ddl(_SUBSCRIPTIONS.replace("DEFAULT x''", "DEFAULT ''")),
    ),
    # Issue 13: runs waiting for a signature (a `signed_by` policy and an unsigned image), and
    # until when; the run is decided when a signature arrives or the wait ends.
    """
    CREATE TABLE signature_waits (
        run_id TEXT PRIMARY KEY,
        until REAL NOT NULL,
        explanation TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX signature_waits_until ON signature_waits(until)
    """,
    # Issue 11: replicas sharing one database. Claims with a lease (owner, until when, on the
    # database's clock): an event being acted on, a run whose transfer is being followed, a
    # scan on push being run; a replica that dies loses them when the lease runs out. `leases`
    # names the duties done by one replica at a time (reconcile, polls, deliveries...).
    """
    ALTER TABLE events ADD COLUMN claimed_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE events ADD COLUMN claim_expires REAL NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN tracked_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE runs ADD COLUMN tracked_until REAL NOT NULL DEFAULT 0;
    ALTER TABLE destination_scans ADD COLUMN claimed_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE destination_scans ADD COLUMN claim_expires REAL NOT NULL DEFAULT 0;
    CREATE INDEX events_tag ON events(repository, tag, state);
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        expires REAL NOT NULL,
        acquired_at REAL NOT NULL
    )
    """,
]


def open_database(data_dir: str | Path, database: str = "") -> Database:
    """Open (creating and migrating) the gateway's database: `database` a postgresql:// URL
    (schema `gateway`) or a SQLite file, by default DATA/gateway.db."""
    return open_service_database(database, Path(data_dir) / "gateway.db", MIGRATIONS, SCHEMA)
