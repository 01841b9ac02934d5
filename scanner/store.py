"""The scanner's SQLite file: OSV records, their affected packages, cached reports."""

from __future__ import annotations

from pathlib import Path

from servicekit.db import Database

MIGRATIONS = [
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
    # Reports per (digest, repository): one image scanned at a source and at its mirror keeps
    # both reports. Older rows take the repository their facts recorded.
    """
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
        SELECT digest, COALESCE(json_extract(facts, '$.repository'), ''), facts,
               database_version, report, scanned_at
        FROM reports;
    DROP TABLE reports;
    ALTER TABLE reports_by_repository RENAME TO reports
    """,
]


def open_database(data_dir: str | Path) -> Database:
    """The scanner database under the service's data folder (created and migrated)."""
    return Database(Path(data_dir) / "scanner.db", MIGRATIONS)
