"""Schema of the transfer service: endpoints, jobs and the workers that run them.

SQLite (DATA/transfer.db, the embedded default) or the PostgreSQL schema `transfer`
(`--database postgresql://...`, shared by every transfer worker).

`endpoints.secret_origin` is the scheme://host:port the secret was given for ('' in rows from
v1: the URL they hold); a secret is only used while the URL still names that origin.
"""

from __future__ import annotations

from pathlib import Path

from servicekit.db import Database, open_service_database

DB_FILE = "transfer.db"
SCHEMA = "transfer"

MIGRATIONS: list[str] = [
    # v1
    """
    CREATE TABLE endpoints (
        name TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        username TEXT NOT NULL DEFAULT '',
        secret_enc BLOB,
        ca_pem TEXT NOT NULL DEFAULT '',
        insecure_skip_verify INTEGER NOT NULL DEFAULT 0,
        max_concurrency INTEGER NOT NULL DEFAULT 0,
        requests_per_second REAL NOT NULL DEFAULT 0,
        scan_on_push INTEGER NOT NULL DEFAULT 0,
        aliases TEXT NOT NULL DEFAULT '[]',
        create_time REAL NOT NULL,
        update_time REAL NOT NULL
    );
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        idempotency_key TEXT UNIQUE,
        state TEXT NOT NULL,
        message TEXT NOT NULL DEFAULT '',
        src_endpoint TEXT NOT NULL,
        src_repository TEXT NOT NULL,
        src_reference TEXT NOT NULL,
        dst_endpoint TEXT NOT NULL,
        dst_repository TEXT NOT NULL,
        dst_tag TEXT NOT NULL DEFAULT '',
        platforms TEXT NOT NULL DEFAULT '[]',
        fail_if_tag_exists INTEGER NOT NULL DEFAULT 0,
        digest TEXT NOT NULL DEFAULT '',
        media_type TEXT NOT NULL DEFAULT '',
        bytes_total INTEGER NOT NULL DEFAULT 0,
        bytes_done INTEGER NOT NULL DEFAULT 0,
        bytes_skipped INTEGER NOT NULL DEFAULT 0,
        blobs_total INTEGER NOT NULL DEFAULT 0,
        blobs_done INTEGER NOT NULL DEFAULT 0,
        blobs_skipped INTEGER NOT NULL DEFAULT 0,
        blobs_mounted INTEGER NOT NULL DEFAULT 0,
        manifests_total INTEGER NOT NULL DEFAULT 0,
        manifests_done INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        create_time REAL NOT NULL,
        start_time REAL,
        end_time REAL
    );
    CREATE INDEX jobs_state ON jobs(state);
    CREATE INDEX jobs_dst ON jobs(dst_endpoint, seq);
    """,
    # v2: secrets bound to the registry they were given for, webhook secrets, source_tag
    # checks, superseded jobs and rescheduled attempts (issue 10).
    """
    ALTER TABLE endpoints ADD COLUMN secret_origin TEXT NOT NULL DEFAULT '';
    ALTER TABLE endpoints ADD COLUMN webhook_secret_enc BLOB;
    ALTER TABLE jobs ADD COLUMN source_tag TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN next_attempt_time REAL;
    ALTER TABLE jobs ADD COLUMN quick_base INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN reschedules INTEGER NOT NULL DEFAULT 0;
    """,
    # v3: referrers copied after the image (issue 13): the kinds asked for, and what was
    # copied (JSON list of {digest, kind, tag}).
    """
    ALTER TABLE jobs ADD COLUMN copy_referrers TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE jobs ADD COLUMN referrers TEXT NOT NULL DEFAULT '[]';
    """,
    # v4: several workers share the job table (issue 11). A job runs under a lease
    # (lease_owner, lease_expires: the database's clock, epoch seconds) that its worker renews;
    # cancel_requested reaches the owner wherever it runs; lane_tag is the destination tag the
    # job writes ('' for a copy by digest), so "one job at a time per destination tag" is a
    # condition of the claim. `workers` holds heartbeats (live workers divide registry limits).
    """
    ALTER TABLE jobs ADD COLUMN lease_owner TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN lease_expires REAL;
    ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN lane_tag TEXT NOT NULL DEFAULT '';
    UPDATE jobs SET lane_tag = CASE WHEN dst_tag != '' THEN dst_tag
        WHEN src_reference LIKE '%:%' THEN '' ELSE src_reference END;
    CREATE INDEX jobs_lane ON jobs(dst_endpoint, dst_repository, lane_tag, seq);
    CREATE TABLE workers (
        id TEXT PRIMARY KEY,
        heartbeat REAL NOT NULL,
        started REAL NOT NULL
    );
    """,
]


def open_database(data_dir: str | Path, database: str = "") -> Database:
    """Open (and migrate) the service's database: `database` a postgresql:// URL (schema
    `transfer`), or empty for DATA/transfer.db."""
    return open_service_database(database, Path(data_dir) / DB_FILE, MIGRATIONS, SCHEMA)
