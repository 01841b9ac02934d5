"""Vulnerability sources (per OSV ecosystem): counts, import times, the data time of an image,
and the migration that gives data imported before sources existed a conservative time; on both
engines (`db_target`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from scanner import store
from scanner.model import Component, OsInfo
from scanner.store import open_database
from scanner.vulndb import VulnDB, iter_bytes
from servicekit.db import Database


def record(vid: str, modified: str, *packages: tuple[str, str]) -> dict[str, object]:
    return {"id": vid, "modified": modified, "affected": [
        {"package": {"ecosystem": eco, "name": name},
         "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}]}]}
        for eco, name in packages]}


def load(v: VulnDB, *records: dict[str, object]) -> None:
    result = v.import_sources(iter_bytes(json.dumps(list(records)).encode()))
    assert not result.errors


def test_a_record_that_moves_ecosystem_moves_its_count(tmp_path: Path, db_target: str) -> None:
    v = VulnDB(open_database(tmp_path, db_target))
    load(v, record("X-1", "2024-01-01T00:00:00Z", ("PyPI", "a")),
         record("X-2", "2024-01-01T00:00:00Z", ("PyPI", "b"), ("npm", "b")))
    assert {s.name: s.records for s in v.sources.sources()} == {"PyPI": 2, "npm": 1}
    load(v, record("X-1", "2024-02-01T00:00:00Z", ("npm", "a")))
    assert {s.name: s.records for s in v.sources.sources()} == {"PyPI": 1, "npm": 2}
    load(v, record("X-2", "2024-02-01T00:00:00Z", ("npm", "b")))
    assert {s.name: s.records for s in v.sources.sources()} == {"npm": 2}
    assert v.status()[0] == 2


def test_data_time_is_the_oldest_source_an_image_needs(tmp_path: Path, db_target: str) -> None:
    v = VulnDB(open_database(tmp_path, db_target))
    ubuntu = OsInfo(id="ubuntu", version_id="22.04")
    deb = Component("curl", "7.81.0-1", "deb", purl="pkg:deb/ubuntu/curl@7.81.0-1")
    py = Component("requests", "2.30.0", "pypi")
    go = Component("x", "1.0", "golang")  # no ecosystem we match: needs nothing
    assert v.data_time([deb], ubuntu) is None  # nothing imported

    load(v, record("U-1", "2024-01-01T00:00:00Z", ("Ubuntu:22.04:LTS", "curl")))
    t_ubuntu = v.update_time
    assert t_ubuntu is not None and v.data_time([deb, go], ubuntu) == t_ubuntu
    assert v.data_time([deb, py], ubuntu) is None  # PyPI never imported
    assert v.data_time([go], ubuntu) == t_ubuntu  # needs no source: the database's time

    load(v, record("P-1", "2024-01-01T00:00:00Z", ("PyPI", "requests")))
    assert v.update_time is not None and v.update_time > t_ubuntu
    assert v.data_time([deb, py], ubuntu) == t_ubuntu  # the older of the two
    assert v.data_time([py], ubuntu) == v.update_time


def test_migration_dates_existing_data_by_its_newest_record(
    tmp_path: Path, db_target: str
) -> None:
    old = Database(db_target, store.MIGRATIONS[:2], schema="scanner")
    rows = [("D-1", "2024-03-01T00:00:00Z", "Debian:12"), ("D-2", "2024-05-02T10:00:00Z",
                                                          "Debian:12"),
            ("N-1", "2023-01-01T00:00:00Z", "npm")]
    for vid, modified, eco in rows:
        old.execute("INSERT INTO vulns (id, modified, summary, aliases, record) "
                    "VALUES (?, ?, '', '[]', '{}')", (vid, modified))
        old.execute("INSERT INTO affected (vuln_id, ecosystem, package, data) "
                    "VALUES (?, ?, 'p', '{}')", (vid, eco))
    old.execute("INSERT INTO reports (digest, repository, facts, database_version, report,"
                " scanned_at) VALUES ('sha256:x', 'r', '{}', 'v', ?, '')", (b"",))
    old.close()

    v = VulnDB(open_database(tmp_path, db_target))
    got = {s.name: (s.records, s.update_time) for s in v.sources.sources()}
    assert got == {"Debian:12": (2, datetime(2024, 5, 2, 10, tzinfo=UTC)),
                   "npm": (1, datetime(2023, 1, 1, tzinfo=UTC))}
    assert v.update_time == datetime(2024, 5, 2, 10, tzinfo=UTC)
    row = v.db.query_one("SELECT database_time FROM reports")
    assert row is not None and row["database_time"] == ""  # re-matched at the next read


def test_an_empty_database_migrates_to_not_loaded(tmp_path: Path, db_target: str) -> None:
    Database(db_target, store.MIGRATIONS[:2], schema="scanner").close()
    v = VulnDB(open_database(tmp_path, db_target))
    assert v.update_time is None and v.sources.sources() == [] and v.status()[0] == 0
