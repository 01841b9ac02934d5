"""OSV import (files, folder, zip, bytes; updates by modified) and matching with real records,
on both engines (`db_target`: a SQLite file, a PostgreSQL database)."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from scanner.model import Component, OsInfo
from scanner.severity import count
from scanner.store import open_database
from scanner.vulndb import VulnDB, affected_version, iter_bytes, iter_path

OSV = Path(__file__).parent / "osv"
DEBIAN12 = OsInfo(id="debian", version_id="12")


@pytest.fixture
def db(tmp_path: Path, db_target: str) -> VulnDB:
    v = VulnDB(open_database(tmp_path, db_target))
    result = v.import_sources(iter_path(OSV))
    assert result.errors == []
    assert result.imported == len(list(OSV.glob("*.json")))
    return v


def deb(name: str, version: str, source: str = "", source_version: str = "") -> Component:
    return Component(name, version, "deb", purl=f"pkg:deb/debian/{name}@{version}?distro=debian-12",
                     source=source or name, source_version=source_version or version)


IMAGE = [
    deb("libc6", "2.36-9+deb12u14", "glibc"),          # fixed in deb12u6: not affected
    deb("libcurl4", "7.88.1-10+deb12u4", "curl"),       # DSA-5587-1
    deb("curl", "7.88.1-10+deb12u4"),                   # same advisory, counted once
    deb("libssl3", "3.0.14-1~deb12u1", "openssl"),      # ~deb12u1 < ~deb12u2: affected
    deb("openssl", "3.0.14-1"),                         # 3.0.14-1 > 3.0.14-1~deb12u2: fixed
    Component("requests", "2.30.0", "pypi"),            # GHSA-j8r2-6x86-q33q 6.1
    Component("urllib3", "2.2.1", "pypi"),              # GHSA-34jh-p97f-mpxf 4.4
    Component("aiohttp", "3.9.2rc1", "pypi"),           # 3.9.2rc1 < 3.9.2: GHSA-5m98 7.5
    Component("lodash", "4.17.20", "npm"),              # GHSA-35jh 7.2; GHSA-p6mc fixed 4.17.19
    Component("minimist", "1.2.5", "npm"),              # GHSA-xvch 9.8
]


def test_matches_and_counts_are_the_hand_checked_ones(db: VulnDB) -> None:
    matches = db.match(IMAGE, DEBIAN12)
    assert sorted((m.id, m.component) for m in matches) == sorted([
        ("DSA-5587-1", "libcurl4"), ("DSA-5587-1", "curl"), ("DSA-5764-1", "libssl3"),
        ("GHSA-j8r2-6x86-q33q", "requests"), ("GHSA-34jh-p97f-mpxf", "urllib3"),
        ("GHSA-5m98-qgg9-wh84", "aiohttp"), ("GHSA-35jh-r3h4-6jhm", "lodash"),
        ("GHSA-xvch-5gv4-984h", "minimist"),
    ])
    c = count(matches)
    assert (c.critical, c.major, c.minor, c.all) == (3, 2, 0, 7)
    fixed = {m.id: m.fixed_version for m in matches}
    assert fixed["DSA-5764-1"] == "3.0.14-1~deb12u2"
    assert fixed["GHSA-34jh-p97f-mpxf"] == "2.2.2"


def test_fixed_versions_are_not_matched(db: VulnDB) -> None:
    fixed = [deb("libcurl4", "7.88.1-10+deb12u5", "curl"), Component("requests", "2.31.0", "pypi"),
             Component("urllib3", "1.26.19", "pypi"), Component("aiohttp", "3.9.2", "pypi"),
             Component("lodash", "4.17.21", "npm"), Component("minimist", "0.2.4", "npm")]
    assert db.match(fixed, DEBIAN12) == []


def test_pypi_names_are_normalized(db: VulnDB) -> None:
    assert [m.id for m in db.match([Component("Requests", "2.30.0", "pypi")], DEBIAN12)] == [
        "GHSA-j8r2-6x86-q33q"]


def test_alpine_origin_and_release(db: VulnDB) -> None:
    alpine = OsInfo(id="alpine", version_id="3.19.1")
    comp = Component("libcrypto3", "3.1.4-r5", "apk", source="openssl")
    assert [m.id for m in db.match([comp], alpine)] == ["CVE-2024-2511"]
    assert db.match([comp], OsInfo(id="alpine", version_id="3.18.6")) == []


def test_debian_release_must_match(db: VulnDB) -> None:
    no_purl = Component("libcurl4", "7.88.1-10+deb12u4", "deb", source="curl")
    assert db.match([no_purl], OsInfo(id="debian", version_id="11")) == []
    assert len(db.match([no_purl], DEBIAN12)) == 1
    # A purl's distro qualifier wins over the image OS (reports list several distros).
    assert len(db.match([deb("libcurl4", "7.88.1-10+deb12u4", "curl")],
                        OsInfo(id="debian", version_id="11"))) == 1


def test_debian_epoch_ordering() -> None:
    rec = json.loads((OSV / "DSA-5218-1.json").read_text())["affected"][0]
    assert affected_version(rec, "Debian:11", "1:1.2.11.dfsg-2+deb11u1") == (
        True, "1:1.2.11.dfsg-2+deb11u2")
    # Without an epoch the version is 0:..., older than any 1:... whatever the digits.
    assert affected_version(rec, "Debian:11", "1.2.13.dfsg-1")[0] is True
    assert affected_version(rec, "Debian:11", "1:1.2.11.dfsg-2+deb11u2")[0] is False
    one = {"ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "2.0"}]}]}
    assert affected_version(one, "Debian:12", "1:2.0")[0] is False
    assert affected_version(one, "Debian:12", "2.0~rc1")[0] is True


def test_pep440_and_semver_edges() -> None:
    rng = {"ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "1.0"}]}]}
    assert affected_version(rng, "PyPI", "1.0rc1")[0] is True
    assert affected_version(rng, "PyPI", "1.0")[0] is False
    assert affected_version(rng, "PyPI", "1.0.post1")[0] is False
    sem = {"ranges": [{"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": "1.0.0"}]}]}
    assert affected_version(sem, "npm", "1.0.0-rc.1")[0] is True
    assert affected_version(sem, "npm", "1.0.0")[0] is False


def test_last_affected_and_explicit_versions_and_reintroduced() -> None:
    last = {"ranges": [{"type": "ECOSYSTEM",
                        "events": [{"introduced": "1.0"}, {"last_affected": "1.5"}]}]}
    assert affected_version(last, "PyPI", "1.5")[0] is True
    assert affected_version(last, "PyPI", "1.5.1")[0] is False
    assert affected_version(last, "PyPI", "0.9")[0] is False
    listed = {"versions": ["0.3.1", "0.3.2"]}
    assert affected_version(listed, "npm", "0.3.2")[0] is True
    assert affected_version(listed, "npm", "0.3.3")[0] is False
    # events given out of order, two spans
    two = {"ranges": [{"type": "ECOSYSTEM", "events": [
        {"fixed": "2.5"}, {"introduced": "3.0"}, {"introduced": "2.0"}, {"fixed": "3.1"}]}]}
    assert [affected_version(two, "PyPI", v)[0] for v in ("1.9", "2.0", "2.6", "3.0", "3.1")] == [
        False, True, False, True, False]


def test_reimport_updates_by_modified_and_version_changes(db: VulnDB, tmp_path: Path) -> None:
    v1 = db.version
    again = db.import_sources(iter_path(OSV))
    assert (again.imported, again.updated, again.skipped) == (0, 0, len(list(OSV.glob("*.json"))))
    assert db.version == v1
    rec = json.loads((OSV / "GHSA-j8r2-6x86-q33q.json").read_text())
    rec["modified"] = "2025-01-01T00:00:00Z"
    rec["affected"][0]["ranges"][0]["events"][1]["fixed"] = "2.32.0"
    res = db.import_sources(iter_bytes(json.dumps(rec).encode()))
    assert (res.imported, res.updated) == (0, 1)
    assert db.version != v1 and res.database_version == db.version
    assert [m.fixed_version for m in db.match([Component("requests", "2.31.0", "pypi")],
                                              DEBIAN12)] == ["2.32.0"]
    # An older copy does not overwrite the newer record.
    rec["modified"] = "2020-01-01T00:00:00Z"
    assert db.import_sources(iter_bytes(json.dumps([rec]).encode())).skipped == 1
    # The version survives a restart.
    assert VulnDB(db.db).version == db.version


def test_zip_export_and_bad_records(tmp_path: Path, db_target: str) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted(OSV.glob("*.json")):
            zf.writestr(f.name, f.read_bytes())
        zf.writestr("broken.json", b"{nope")
        zf.writestr("noid.json", json.dumps({"modified": "2024-01-01T00:00:00Z"}))
    v = VulnDB(open_database(tmp_path / "z", db_target))
    res = v.import_sources(iter_bytes(buf.getvalue()))
    assert res.imported == len(list(OSV.glob("*.json")))
    assert len(res.errors) == 2 and any("broken.json" in e for e in res.errors)
    assert any("noid.json" in e and "'id'" in e for e in res.errors)
    path = tmp_path / "all.zip"
    path.write_bytes(buf.getvalue())
    v2 = VulnDB(open_database(tmp_path / "z2"))  # SQLite
    assert v2.import_sources(iter_path(path)).imported == res.imported
    assert v2.version == v.version  # the same data has the same version on either engine


def test_withdrawn_records_do_not_match(tmp_path: Path, db_target: str) -> None:
    d = tmp_path / "osv"
    shutil.copytree(OSV, d)
    rec = json.loads((d / "GHSA-xvch-5gv4-984h.json").read_text())
    rec["withdrawn"] = "2024-05-01T00:00:00Z"
    (d / "GHSA-xvch-5gv4-984h.json").write_text(json.dumps(rec))
    v = VulnDB(open_database(tmp_path, db_target))
    v.import_sources(iter_path(d))
    assert v.match([Component("minimist", "1.2.5", "npm")], DEBIAN12) == []
