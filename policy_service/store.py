"""Policies in the service's database (servicekit.db: SQLite under --data, or PostgreSQL
schema "policy"): the durable copy the in-memory index is rebuilt from.

Every write also logs itself in the change log (policy_service.changes), which is how other
replicas on the same PostgreSQL database learn what to reload.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from policy_service import changes
from policy_service.changes import Changes
from servicekit.db import (
    INTEGRITY_ERRORS,
    Database,
    Migration,
    MigrationStep,
    Row,
    open_service_database,
    pg_ddl,
)

MIGRATIONS: list[MigrationStep] = [
    # 1: policies; names are unique, the etag changes on every write.
    """
    CREATE TABLE policies (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        description TEXT NOT NULL DEFAULT '',
        source_repository TEXT NOT NULL,
        rule TEXT NOT NULL,
        target_endpoint TEXT NOT NULL,
        target_repository TEXT NOT NULL,
        tag_template TEXT NOT NULL,
        time_zone TEXT NOT NULL DEFAULT '',
        enabled INTEGER NOT NULL,
        create_time_us INTEGER NOT NULL,
        update_time_us INTEGER NOT NULL,
        etag TEXT NOT NULL,
        version INTEGER NOT NULL
    );
    CREATE INDEX policies_source ON policies(source_repository);
    """,
    # 2: the source endpoint (empty until the start-up migration picks one), overwrite
    # control, the fail-open opt-out, when the policy became active, and why the server
    # disabled it. Policies enabled before this version count as active since their last
    # update: Reconcile must not backfill what was there before.
    """
    ALTER TABLE policies ADD COLUMN source_endpoint TEXT NOT NULL DEFAULT '';
    ALTER TABLE policies ADD COLUMN overwrite INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE policies ADD COLUMN allow_incomplete_facts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE policies ADD COLUMN active_since_us INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE policies ADD COLUMN disabled_reason TEXT NOT NULL DEFAULT '';
    UPDATE policies SET active_since_us = update_time_us WHERE enabled = 1;
    CREATE INDEX policies_source_endpoint ON policies(source_endpoint);
    """,
    # 3: trigger, copy settings and signature wait (issues 12, 13; JSON lists, durations in
    # microseconds; existing policies keep today's behaviour: push, everything, no deletions),
    # and the trusted keys `signed_by` rules verify against.
    """
    ALTER TABLE policies ADD COLUMN trigger_kind TEXT NOT NULL DEFAULT '';
    ALTER TABLE policies ADD COLUMN schedule_interval_us INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE policies ADD COLUMN schedule_cron TEXT NOT NULL DEFAULT '';
    ALTER TABLE policies ADD COLUMN schedule_jitter_us INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE policies ADD COLUMN platforms TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE policies ADD COLUMN keep_newest INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE policies ADD COLUMN deletions INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE policies ADD COLUMN copy_referrers TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE policies ADD COLUMN signature_wait_us INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE trusted_keys (
        name TEXT PRIMARY KEY,
        public_key_pem TEXT NOT NULL,
        algorithm TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        create_time_us INTEGER NOT NULL
    );
    """,
    # 4: the change log replicas reload from (policy_service.changes). On PostgreSQL, names
    # compare byte by byte as on SQLite, so ListPolicies pages in the same order on both.
    Migration(
        sqlite=changes.MIGRATION,
        postgresql=pg_ddl(changes.MIGRATION)
        + ';\nALTER TABLE policies ALTER COLUMN name TYPE TEXT COLLATE "C"',
    ),
]

DB_FILE = "policy.sqlite3"


@dataclass(frozen=True)
class PolicyRecord:
    """One stored policy; times in microseconds since the epoch (UTC)."""

    id: str
    name: str
    description: str
    source_repository: str
    rule: str
    target_endpoint: str
    target_repository: str
    tag_template: str
    time_zone: str
    enabled: bool
    create_time_us: int
    update_time_us: int
    etag: str
    version: int
    # Empty only for a policy stored before sources had endpoints, until it is migrated.
    source_endpoint: str = ""
    # A mirror.v1.Overwrite value.
    overwrite: int = 0
    allow_incomplete_facts: bool = False
    # 0: never active (created disabled and not enabled since).
    active_since_us: int = 0
    disabled_reason: str = ""
    # Trigger and copy settings (policy_service.settings); "" trigger_kind means push.
    trigger_kind: str = ""
    schedule_interval_us: int = 0
    schedule_cron: str = ""
    schedule_jitter_us: int = 0
    platforms: tuple[str, ...] = ()
    keep_newest: int = 0
    # A mirror.v1.DeletionMode value.
    deletions: int = 0
    copy_referrers: tuple[str, ...] = ()
    signature_wait_us: int = 0

    def evolve(self, **changes: object) -> PolicyRecord:
        return replace(self, **changes)  # type: ignore[arg-type]


class NameTaken(Exception):
    """Another policy already has this name."""


class PolicyMissing(Exception):
    """No policy has this id."""


class EtagMismatch(Exception):
    """The policy changed since the caller read it."""


_COLUMNS = (
    "id, name, description, source_repository, rule, target_endpoint, target_repository, "
    "tag_template, time_zone, enabled, create_time_us, update_time_us, etag, version, "
    "source_endpoint, overwrite, allow_incomplete_facts, active_since_us, disabled_reason, "
    "trigger_kind, schedule_interval_us, schedule_cron, schedule_jitter_us, platforms, "
    "keep_newest, deletions, copy_referrers, signature_wait_us"
)
_PLACEHOLDERS = ", ".join("?" * len(_COLUMNS.split(",")))


def _record(row: Row) -> PolicyRecord:
    return PolicyRecord(
        id=row["id"],
        name=row["name"],
        description=row["description"],
        source_repository=row["source_repository"],
        rule=row["rule"],
        target_endpoint=row["target_endpoint"],
        target_repository=row["target_repository"],
        tag_template=row["tag_template"],
        time_zone=row["time_zone"],
        enabled=bool(row["enabled"]),
        create_time_us=row["create_time_us"],
        update_time_us=row["update_time_us"],
        etag=row["etag"],
        version=row["version"],
        source_endpoint=row["source_endpoint"],
        overwrite=row["overwrite"],
        allow_incomplete_facts=bool(row["allow_incomplete_facts"]),
        active_since_us=row["active_since_us"],
        disabled_reason=row["disabled_reason"],
        trigger_kind=row["trigger_kind"],
        schedule_interval_us=row["schedule_interval_us"],
        schedule_cron=row["schedule_cron"],
        schedule_jitter_us=row["schedule_jitter_us"],
        platforms=tuple(json.loads(row["platforms"])),
        keep_newest=row["keep_newest"],
        deletions=row["deletions"],
        copy_referrers=tuple(json.loads(row["copy_referrers"])),
        signature_wait_us=row["signature_wait_us"],
    )


def _values(r: PolicyRecord) -> tuple[object, ...]:
    return (
        r.id, r.name, r.description, r.source_repository, r.rule, r.target_endpoint,
        r.target_repository, r.tag_template, r.time_zone, int(r.enabled), r.create_time_us,
        r.update_time_us, r.etag, r.version, r.source_endpoint, r.overwrite,
        int(r.allow_incomplete_facts), r.active_since_us, r.disabled_reason,
        *_settings(r),
    )


def _settings(r: PolicyRecord) -> tuple[object, ...]:
    """The issue 12/13 columns, in _COLUMNS order."""
    return (
        r.trigger_kind, r.schedule_interval_us, r.schedule_cron, r.schedule_jitter_us,
        json.dumps(list(r.platforms)), r.keep_newest, r.deletions,
        json.dumps(list(r.copy_referrers)), r.signature_wait_us,
    )


def _is_name_clash(err: BaseException) -> bool:
    # SQLite names the column, PostgreSQL the constraint.
    text = str(err)
    return "policies.name" in text or "policies_name_key" in text


class PolicyStore:
    """CRUD over the policies table; every write is one transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @classmethod
    def open(cls, data_dir: str | Path, database: str = "") -> PolicyStore:
        """`database` a postgresql:// URL, or empty for SQLite under `data_dir`."""
        return cls(
            open_service_database(database, Path(data_dir) / DB_FILE, MIGRATIONS, schema="policy")
        )

    def close(self) -> None:
        self.db.close()

    def all(self) -> list[PolicyRecord]:
        return [_record(r) for r in self.db.query(f"SELECT {_COLUMNS} FROM policies")]

    def get(self, policy_id: str) -> PolicyRecord | None:
        row = self.db.query_one(f"SELECT {_COLUMNS} FROM policies WHERE id = ?", (policy_id,))
        return _record(row) if row else None

    def id_of(self, name: str) -> str | None:
        """The id of the policy called `name`."""
        row = self.db.query_one("SELECT id FROM policies WHERE name = ?", (name,))
        return str(row["id"]) if row else None

    def name_exists(self, name: str, except_id: str = "") -> bool:
        row = self.db.query_one(
            "SELECT 1 FROM policies WHERE name = ? AND id != ?", (name, except_id)
        )
        return row is not None

    def get_many(self, ids: Collection[str] | None) -> dict[str, PolicyRecord | None]:
        """The stored policies among `ids` (None for each one missing); None: every policy."""
        if ids is None:
            return {r.id: r for r in self.all()}
        out: dict[str, PolicyRecord | None] = dict.fromkeys(ids)
        if ids:
            for r in self.db.query(
                f"SELECT {_COLUMNS} FROM policies WHERE {self._id_among()}", (self._ids(ids),)
            ):
                out[r["id"]] = _record(r)
        return out

    def _id_among(self) -> str:
        """`id` is one of a list given as one parameter (see _ids)."""
        if self.db.dialect == "postgresql":
            return "id = ANY(?)"
        return "id IN (SELECT value FROM json_each(?))"

    def _ids(self, ids: Iterable[str]) -> object:
        return sorted(ids) if self.db.dialect == "postgresql" else json.dumps(sorted(ids))

    def change_seq(self) -> int:
        """The change log's seq now: compared with a replica's to know whether to reload."""
        row = self.db.query_one("SELECT value FROM change_counter WHERE id = 1")
        return int(row[0]) if row else 0

    def changes_since(self, seq: int) -> Changes | None:
        """What was written after `seq` (None: nothing); see policy_service.changes."""
        with self.db.transaction() as c:
            return changes.since(c, seq)

    def insert(self, rec: PolicyRecord, expected_seq: int | None = None) -> int:
        """Store a new policy; returns the change seq. StaleView: `expected_seq` moved."""
        try:
            with self.db.transaction() as c:
                seq = changes.record(c, changes.POLICY, [rec.id], expected_seq)
                c.execute(
                    f"INSERT INTO policies ({_COLUMNS}) VALUES ({_PLACEHOLDERS})",
                    _values(rec),
                )
                return seq
        except INTEGRITY_ERRORS as err:
            if _is_name_clash(err):
                raise NameTaken(rec.name) from err
            raise

    def insert_many(self, recs: Iterable[PolicyRecord]) -> int:
        """Bulk load in one transaction (benchmarks and imports); returns the change seq."""
        rows = list(recs)
        with self.db.transaction() as c:
            seq = changes.record(c, changes.POLICY, sorted({r.id for r in rows}))
            c.executemany(
                f"INSERT INTO policies ({_COLUMNS}) VALUES ({_PLACEHOLDERS})",
                [_values(r) for r in rows],
            )
            return seq

    def update(
        self, rec: PolicyRecord, expected_etag: str, expected_seq: int | None = None
    ) -> int:
        """Replace the policy `rec.id` if its stored etag is still `expected_etag`; returns
        the change seq. StaleView: `expected_seq` moved."""
        try:
            with self.db.transaction() as c:
                seq = changes.record(c, changes.POLICY, [rec.id], expected_seq)
                row = c.execute("SELECT etag FROM policies WHERE id = ?", (rec.id,)).fetchone()
                if row is None:
                    raise PolicyMissing(rec.id)
                if row["etag"] != expected_etag:
                    raise EtagMismatch(rec.id)
                # Every column but id and create_time_us (immutable).
                c.execute(
                    "UPDATE policies SET name=?, description=?, source_repository=?, rule=?, "
                    "target_endpoint=?, target_repository=?, tag_template=?, time_zone=?, "
                    "enabled=?, update_time_us=?, etag=?, version=?, source_endpoint=?, "
                    "overwrite=?, allow_incomplete_facts=?, active_since_us=?, "
                    "disabled_reason=?, trigger_kind=?, schedule_interval_us=?, "
                    "schedule_cron=?, schedule_jitter_us=?, platforms=?, keep_newest=?, "
                    "deletions=?, copy_referrers=?, signature_wait_us=? WHERE id=?",
                    (
                        rec.name, rec.description, rec.source_repository, rec.rule,
                        rec.target_endpoint, rec.target_repository, rec.tag_template,
                        rec.time_zone, int(rec.enabled), rec.update_time_us, rec.etag,
                        rec.version, rec.source_endpoint, rec.overwrite,
                        int(rec.allow_incomplete_facts), rec.active_since_us,
                        rec.disabled_reason, *_settings(rec), rec.id,
                    ),
                )
                return seq
        except INTEGRITY_ERRORS as err:
            if _is_name_clash(err):
                raise NameTaken(rec.name) from err
            raise

    def delete(
        self, policy_id: str, expected_etag: str = "", expected_seq: int | None = None
    ) -> int:
        """Delete; when `expected_etag` is given it must equal the stored one. Returns the
        change seq; StaleView: `expected_seq` moved."""
        with self.db.transaction() as c:
            seq = changes.record(c, changes.POLICY, [policy_id], expected_seq)
            row = c.execute("SELECT etag FROM policies WHERE id = ?", (policy_id,)).fetchone()
            if row is None:
                raise PolicyMissing(policy_id)
            if expected_etag and row["etag"] != expected_etag:
                raise EtagMismatch(policy_id)
            c.execute("DELETE FROM policies WHERE id = ?", (policy_id,))
            return seq

    def page(
        self, after_name: str, limit: int, only_ids: Iterable[str] | None = None
    ) -> list[PolicyRecord]:
        """Up to `limit` policies ordered by name, after `after_name`, optionally among ids."""
        if only_ids is None:
            rows = self.db.query(
                f"SELECT {_COLUMNS} FROM policies WHERE name > ? ORDER BY name LIMIT ?",
                (after_name, limit),
            )
        else:
            rows = self.db.query(
                f"SELECT {_COLUMNS} FROM policies WHERE name > ? "
                f"AND {self._id_among()} ORDER BY name LIMIT ?",
                (after_name, self._ids(only_ids), limit),
            )
        return [_record(r) for r in rows]
