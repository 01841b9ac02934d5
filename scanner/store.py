"""The scanner's database: OSV records, their affected packages, cached reports. A SQLite file
under --data, or the schema "scanner" of a PostgreSQL database (`--database`)."""

from __future__ import annotations

from pathlib import Path

from servicekit.db import Database, Migration, MigrationStep, open_service_database, pg_ddl

DB_FILE = "scanner.db"

# Reports per (digest, repository): one image scanned at a source and at its mirror keeps
# both reports. Older rows take the repository their facts recorded ({repository} is how
# each engine reads it from the facts' JSON).
_REPORTS_BY_REPOSITORY = """
    CREATE TABLE reports_by_repository (
        digest TEXT NOT NULL,
        repository TEXT NOT NULL DEFAULT '',
        facts TEXT NOT NULL,
        database_version TEXT NOT NULL,
        report BLOB NOT NULL,
        scanned_at TEXT NOT NULL,
        PRIMARY KEY (digest, repository)
    );
    INSERT INTO reports_by_repository
        SELECT digest, COALESCE({repository}, ''), facts,
               database_version, report, scanned_at
        FROM reports;
    DROP TABLE reports;
    ALTER TABLE reports_by_repository RENAME TO reports
"""

MIGRATIONS: list[MigrationStep] = [
    """
    CREATE TABLE vulns (
        id TEXT PRIMARY KEY,
        modified TEXT NOT NULL,
        withdrawn INTEGER NOT NULL DEFAULT 0,
        summary TEXT NOT NULL,
        aliases TEXT NOT NULL,
        score REAL,
        record TEXT NOT NULL
    );
    CREATE TABLE affected (
        vuln_id TEXT NOT NULL REFERENCES vulns(id) ON DELETE CASCADE,
        ecosystem TEXT NOT NULL,
        package TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX affected_package ON affected(ecosystem, package);
    CREATE INDEX affected_vuln ON affected(vuln_id);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE reports (
        digest TEXT PRIMARY KEY,
        facts TEXT NOT NULL,
        database_version TEXT NOT NULL,
        report BLOB NOT NULL,
        scanned_at TEXT NOT NULL
    )
    """,
    # 2: reports per (digest, repository).
    Migration(
        sqlite=_REPORTS_BY_REPOSITORY.format(repository="json_extract(facts, '$.repository')"),
        postgresql=pg_ddl(_REPORTS_BY_REPOSITORY.format(repository="facts::json->>'repository'")),
    ),
    # Sources (OSV ecosystems) with their record counts and last import time, and the
    # database time each cached report was matched at. Data imported before this existed
    # gets its newest record's `modified` as its time: older than the real import, so an
    # age limit errs on the side of blocking.
    """
    CREATE TABLE vuln_sources (
        name TEXT PRIMARY KEY,
        records INTEGER NOT NULL,
        update_time TEXT NOT NULL
    );
    INSERT INTO vuln_sources (name, records, update_time)
        SELECT a.ecosystem, COUNT(DISTINCT a.vuln_id), MAX(v.modified)
        FROM affected a JOIN vulns v ON v.id = a.vuln_id GROUP BY a.ecosystem;
    INSERT INTO meta (key, value)
        SELECT 'update_time', MAX(modified) FROM vulns HAVING COUNT(*) > 0;
    ALTER TABLE reports ADD COLUMN database_time TEXT NOT NULL DEFAULT ''
    """,
    # 4: a row each import batch locks first, so imports by several scanners on one
    # PostgreSQL database take turns (one batch's read-then-write sees the other's rows).
    """
    INSERT INTO meta (key, value) VALUES ('import_lock', '')
    """,
]


def open_database(data_dir: str | Path, database: str = "") -> Database:
    """The scanner database (created and migrated): `database` a postgresql:// URL, or empty
    for the SQLite file under the service's data folder."""
    return open_service_database(database, Path(data_dir) / DB_FILE, MIGRATIONS, schema="scanner")
