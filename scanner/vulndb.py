"""OSV vulnerability database (the scanner's SQLite or PostgreSQL database, scanner.store), and
matching of components against it (univers).

Its version and source times are held in memory for matching; on PostgreSQL another scanner
may import into the same database, so `refresh()` compares them with the stored ones (one
small SELECT) and reloads when they moved.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from packageurl import PackageURL
from univers.versions import (
    AlpineLinuxVersion,
    DebianVersion,
    InvalidVersion,
    PypiVersion,
    SemverVersion,
    Version,
)

from scanner.errors import ScanError
from scanner.model import Component, OsInfo, VulnMatch
from scanner.parsers.python import normalize_name
from scanner.severity import osv_score
from scanner.vulnsources import Source, SourceTable
from servicekit.db import Database, Tx

log = logging.getLogger("scanner.vulndb")

MAX_RECORD_BYTES = 16 << 20
MAX_ERRORS = 100
_BATCH = 2000
_ZIP_MAGIC = b"PK\x03\x04"

_VERSION_CLASSES: dict[str, type[Version]] = {
    "Debian": DebianVersion,
    "Ubuntu": DebianVersion,
    "Alpine": AlpineLinuxVersion,
    "PyPI": PypiVersion,
    "npm": SemverVersion,
}


@dataclass
class ImportResult:
    imported: int = 0
    updated: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    database_version: str = ""
    # Valid records seen (new, newer or already held), and the ecosystems they name.
    valid: int = field(default=0, repr=False)
    ecosystems: set[str] = field(default_factory=set, repr=False)
    # Ecosystems that replaced records were in before (their counts may drop).
    replaced_ecosystems: set[str] = field(default_factory=set, repr=False)

    def error(self, message: str) -> None:
        self.skipped += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)


def _package_key(ecosystem: str, name: str) -> str:
    return normalize_name(name) if ecosystem == "PyPI" else name


def _base(ecosystem: str) -> str:
    return ecosystem.split(":", 1)[0]


def ecosystems_for(comp: Component, os_info: OsInfo) -> list[str]:
    """OSV ecosystems a component belongs to ("Debian:12", "Alpine:v3.19", "PyPI", "npm")."""
    if comp.type == "pypi":
        return ["PyPI"]
    if comp.type == "npm":
        return ["npm"]
    distro_id, version_id = os_info.id, os_info.version_id
    if comp.purl:
        try:
            q = PackageURL.from_string(comp.purl).qualifiers or {}
        except ValueError:
            q = {}
        distro = str(q.get("distro", "")) if isinstance(q, dict) else ""
        if distro:
            head, sep, tail = distro.rpartition("-")
            distro_id, version_id = (head, tail) if sep else (distro_id, distro)
    if comp.type == "deb":
        if distro_id == "ubuntu" and version_id:
            return [f"Ubuntu:{version_id}", f"Ubuntu:{version_id}:LTS"]
        major = version_id.split(".")[0]
        return [f"Debian:{major}"] if major else ["Debian"]
    if comp.type == "apk":
        parts = version_id.lstrip("v").split(".")
        return [f"Alpine:v{parts[0]}.{parts[1]}"] if len(parts) >= 2 else ["Alpine"]
    return []


@functools.lru_cache(maxsize=65536)
def _parse_version(cls: type[Version], text: str) -> Version | None:
    try:
        return cls(text)
    except (InvalidVersion, ValueError, TypeError):
        return None


def _event_version(cls: type[Version], value: str) -> Version | None:
    # univers' attrs-made Version classes are hashable; typeshed's Hashable check disagrees.
    return None if value == "0" else _parse_version(cls, value)  # type: ignore[arg-type]


def affected_version(affected: dict[str, Any], ecosystem: str, version: str) -> tuple[bool, str]:
    """Whether `version` is affected by one OSV `affected` entry, and the fixed version.

    Implements the OSV evaluation: explicit `versions`, then each ECOSYSTEM/SEMVER range's
    events sorted by version (introduced / fixed / last_affected / limit).
    """
    listed = affected.get("versions") or []
    hit = version in listed
    fixed_out = ""
    for rng in affected.get("ranges") or []:
        rtype = rng.get("type")
        if rtype == "SEMVER":
            cls: type[Version] = SemverVersion
        elif rtype == "ECOSYSTEM":
            cls = _VERSION_CLASSES.get(_base(ecosystem), SemverVersion)
        else:
            continue  # GIT ranges name commits, not versions
        text = version.lstrip("v") if rtype == "SEMVER" else version
        current = _parse_version(cls, text)  # type: ignore[arg-type]  # see _event_version
        if current is None:
            continue
        events: list[tuple[Version | None, str, str]] = []
        ok = True
        for ev in rng.get("events") or []:
            for kind in ("introduced", "fixed", "last_affected", "limit"):
                if kind in ev:
                    value = str(ev[kind])
                    parsed = _event_version(cls, value)
                    if parsed is None and value != "0":
                        ok = False
                    events.append((parsed, kind, value))
        if not ok:
            log.debug("skipping a range with unparsable versions (%s)", ecosystem)
            continue
        # "introduced: 0" sorts first; at equal versions introduced goes before fixed.
        events = _sorted_events(events, {"introduced": 0, "last_affected": 1, "fixed": 2,
                                         "limit": 3})
        vulnerable = False
        for parsed, kind, _value in events:
            if kind == "introduced":
                if parsed is None or current >= parsed:
                    vulnerable = True
            elif parsed is not None and _ends(kind, parsed, current):
                vulnerable = False
        if vulnerable:
            hit = True
            fixed_out = fixed_out or _next_fixed(events, current)
    return hit, fixed_out


def _ends(kind: str, event: Version, current: Version) -> bool:
    """Whether a fixed / limit / last_affected event ends the vulnerable span at `current`."""
    if kind == "last_affected":
        return bool(current > event)
    return kind in ("fixed", "limit") and bool(current >= event)


def _sorted_events(
    events: list[tuple[Version | None, str, str]], order: dict[str, int]
) -> list[tuple[Version | None, str, str]]:
    zero = [e for e in events if e[0] is None]
    rest = [e for e in events if e[0] is not None]
    def compare(a: tuple[Any, str, str], b: tuple[Any, str, str]) -> int:
        return _cmp(a, b, order)

    rest.sort(key=functools.cmp_to_key(compare))
    return zero + rest


def _cmp(a: tuple[Any, str, str], b: tuple[Any, str, str], order: dict[str, int]) -> int:
    if a[0] < b[0]:
        return -1
    if a[0] > b[0]:
        return 1
    return order[a[1]] - order[b[1]]


def _next_fixed(events: list[tuple[Version | None, str, str]], current: Version) -> str:
    for parsed, kind, value in events:
        if kind == "fixed" and parsed is not None and current < parsed:
            return value
    return ""


def _modified_key(value: str) -> datetime | str:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value


def _newer(new: str, old: str) -> bool:
    a, b = _modified_key(new), _modified_key(old)
    if type(a) is not type(b):
        return new > old
    return a > b  # type: ignore[operator]


def iter_path(path: str | Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every OSV JSON in a file, a folder (recursive) or a zip."""
    p = Path(path)
    if p.is_dir():
        for f in sorted(p.rglob("*")):
            if f.is_file() and (f.suffix == ".json" or f.suffix == ".zip"):
                yield from iter_path(f)
        return
    if not p.is_file():
        raise ScanError("IMPORT_SOURCE_MISSING", f"{path} is not a file or folder")
    with p.open("rb") as fh:
        magic = fh.read(4)
    if magic == _ZIP_MAGIC:
        with zipfile.ZipFile(p) as zf:
            yield from _iter_zip(zf, str(p))
        return
    if p.stat().st_size > MAX_RECORD_BYTES * 8:
        raise ScanError("IMPORT_TOO_LARGE", f"{path} is larger than {MAX_RECORD_BYTES * 8} bytes")
    yield str(p), p.read_bytes()


def iter_bytes(data: bytes) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of OSV JSON given inline: one record, a list, or a zip."""
    if data.startswith(_ZIP_MAGIC):
        try:
            zf = zipfile.ZipFile(io.BytesIO(data))
        except zipfile.BadZipFile as exc:
            raise ScanError("IMPORT_UNREADABLE", f"data is not a readable zip: {exc}") from None
        with zf:
            yield from _iter_zip(zf, "data")
        return
    yield "data", data


def _iter_zip(zf: zipfile.ZipFile, label: str) -> Iterator[tuple[str, bytes]]:
    for info in zf.infolist():
        if info.is_dir() or not info.filename.endswith(".json"):
            continue
        name = f"{label}:{info.filename}"
        if info.file_size > MAX_RECORD_BYTES:
            yield name, b""  # reported as an error by the importer, never inflated
            continue
        with zf.open(info) as fh:
            yield name, fh.read(MAX_RECORD_BYTES + 1)


def _records(name: str, data: bytes, result: ImportResult) -> Iterator[dict[str, Any]]:
    if not data or len(data) > MAX_RECORD_BYTES * 8:
        result.error(f"{name}: empty or larger than the record limit")
        return
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        result.error(f"{name}: not JSON ({exc})")
        return
    items = doc if isinstance(doc, list) else [doc]
    for i, item in enumerate(items):
        where = name if len(items) == 1 else f"{name}[{i}]"
        problem = _invalid(item)
        if problem:
            result.error(f"{where}: {problem}")
            continue
        yield item


def _invalid(rec: Any) -> str:
    if not isinstance(rec, dict):
        return "an OSV record must be a JSON object"
    if not isinstance(rec.get("id"), str) or not rec["id"]:
        return "missing string field 'id'"
    if not isinstance(rec.get("modified"), str) or not rec["modified"]:
        return f"{rec['id']}: missing string field 'modified'"
    affected = rec.get("affected", [])
    if not isinstance(affected, list):
        return f"{rec['id']}: 'affected' must be a list"
    for a in affected:
        if not isinstance(a, dict):
            return f"{rec['id']}: each 'affected' entry must be an object"
        pkg = a.get("package")
        if pkg is not None and not (
            isinstance(pkg, dict)
            and isinstance(pkg.get("ecosystem"), str)
            and isinstance(pkg.get("name"), str)
        ):
            return f"{rec['id']}: affected.package needs string 'ecosystem' and 'name'"
    return ""


def _take_import_lock(c: Tx) -> None:
    """Lock the import row until commit: imports by several scanners take turns."""
    c.execute("UPDATE meta SET value = value WHERE key = 'import_lock'")


class VulnDB:
    """OSV records indexed by (ecosystem, package); the version string changes with content."""

    def __init__(self, db: Database) -> None:
        self.db = db
        row = db.query_one("SELECT value FROM meta WHERE key='version'")
        self._version = row["value"] if row else "empty"
        self.sources = SourceTable(db)

    def refresh(self) -> None:
        """Take up an import another process made into this database (blocking: db.run)."""
        rows = self.db.query(
            "SELECT key, value FROM meta WHERE key IN ('version', 'update_time')"
        )
        stored = {r["key"]: r["value"] for r in rows}
        if stored.get("version", "empty") != self._version:
            self._version = stored.get("version", "empty")
        if stored.get("update_time") != self.sources.update_text:
            self.sources.reload()

    @property
    def version(self) -> str:
        return self._version

    @property
    def update_time(self) -> datetime | None:
        """When the newest import with valid records ran; None: nothing was ever imported."""
        return self.sources.update_time

    def count(self) -> int:
        return int(self.db.query_one("SELECT COUNT(*) AS n FROM vulns")["n"])  # type: ignore[index]

    def status(self) -> tuple[int, list[Source]]:
        """(records held, sources by name)."""
        return self.count(), self.sources.sources()

    def data_time(self, components: Iterable[Component], os_info: OsInfo) -> datetime | None:
        """How fresh the data is for these components (see SourceTable.data_time)."""
        return self.sources.data_time(ecosystems_for(c, os_info) for c in components)

    def import_sources(self, sources: Iterable[tuple[str, bytes]]) -> ImportResult:
        """Import OSV records; a newer `modified` replaces a stored record, else it is skipped."""
        result = ImportResult()
        batch: list[dict[str, Any]] = []
        try:
            for name, data in sources:
                for rec in _records(name, data, result):
                    batch.append(rec)
                    if len(batch) >= _BATCH:
                        self._store(batch, result)
                        batch = []
        except zipfile.BadZipFile as exc:
            result.error(f"unreadable zip: {exc}")
        if batch:
            self._store(batch, result)
        # On PostgreSQL another scanner may import into the same tables at the same time:
        # records it stored first are skipped here yet change the version, and its own
        # version write may not have landed, so the version is computed again (under the
        # import lock, from every committed record).
        shared = self.db.dialect == "postgresql" and result.valid > 0
        if result.imported or result.updated or shared:
            self._refresh_version()
        if result.valid:
            # Even an import that changed nothing says the data is current as of now.
            self.sources.record_import(
                result.ecosystems, result.replaced_ecosystems, datetime.now(UTC))
        else:
            self.refresh()
        result.database_version = self._version
        return result

    def _store(self, batch: list[dict[str, Any]], result: ImportResult) -> None:
        latest: dict[str, dict[str, Any]] = {}
        for rec in batch:  # the same id twice in one batch: keep the newest
            old = latest.get(rec["id"])
            if old is None or _newer(rec["modified"], old["modified"]):
                latest[rec["id"]] = rec
        result.skipped += len(batch) - len(latest)
        result.valid += len(batch)
        for rec in batch:
            for aff in rec.get("affected") or []:
                if aff.get("package"):
                    result.ecosystems.add(aff["package"]["ecosystem"])
        with self.db.transaction() as c:
            _take_import_lock(c)
            ids = list(latest)
            existing: dict[str, str] = {}
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for row in c.execute(
                    f"SELECT id, modified FROM vulns WHERE id IN ({marks})", chunk
                ):
                    existing[row["id"]] = row["modified"]
            vuln_rows, affected_rows, replaced = [], [], []
            for vid, rec in latest.items():
                if vid in existing:
                    if not _newer(rec["modified"], existing[vid]):
                        result.skipped += 1
                        continue
                    replaced.append((vid,))
                    result.replaced_ecosystems.update(
                        r[0] for r in c.execute(
                            "SELECT DISTINCT ecosystem FROM affected WHERE vuln_id=?", (vid,)))
                    result.updated += 1
                else:
                    result.imported += 1
                vuln_rows.append((
                    vid, rec["modified"], 1 if rec.get("withdrawn") else 0,
                    str(rec.get("summary") or rec.get("details", "")[:200]),
                    json.dumps([a for a in rec.get("aliases") or [] if isinstance(a, str)]),
                    osv_score(rec), json.dumps(rec, separators=(",", ":")),
                ))
                for aff in rec.get("affected") or []:
                    pkg = aff.get("package")
                    if not pkg:
                        continue
                    eco = pkg["ecosystem"]
                    affected_rows.append(
                        (vid, eco, _package_key(_base(eco), pkg["name"]),
                         json.dumps(aff, separators=(",", ":")))
                    )
            c.executemany("DELETE FROM affected WHERE vuln_id=?", replaced)
            c.executemany(
                "INSERT INTO vulns (id, modified, withdrawn, summary, aliases, score, record)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " modified=excluded.modified, withdrawn=excluded.withdrawn,"
                " summary=excluded.summary, aliases=excluded.aliases, score=excluded.score,"
                " record=excluded.record",
                vuln_rows,
            )
            c.executemany(
                "INSERT INTO affected (vuln_id, ecosystem, package, data) VALUES (?, ?, ?, ?)",
                affected_rows,
            )

    def _refresh_version(self) -> None:
        with self.db.transaction() as c:
            _take_import_lock(c)
            # Sorted here, not by the engine: a PostgreSQL collation may order ids otherwise.
            rows = sorted((str(r[0]), str(r[1])) for r in c.execute(
                "SELECT id, modified FROM vulns"))
            h = hashlib.sha256()
            for vid, modified in rows:
                h.update(f"{vid}\0{modified}\n".encode())
            self._version = f"{len(rows)}-{h.hexdigest()[:16]}"
            c.execute(
                "INSERT INTO meta (key, value) VALUES ('version', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (self._version,),
            )

    def match(self, components: Iterable[Component], os_info: OsInfo) -> list[VulnMatch]:
        """Every (vulnerability, component) pair where the installed version is affected."""
        out: list[VulnMatch] = []
        for comp in components:
            seen: set[str] = set()
            for eco in ecosystems_for(comp, os_info):
                lookups = [(comp.name, comp.version)]
                if comp.source and comp.source != comp.name:
                    lookups.append((comp.source, comp.source_version or comp.version))
                elif comp.source_version and comp.source_version != comp.version:
                    lookups.append((comp.name, comp.source_version))
                for name, version in lookups:
                    for row in self.db.query(
                        "SELECT a.data, v.id, v.aliases, v.summary, v.score FROM affected a "
                        "JOIN vulns v ON v.id = a.vuln_id "
                        "WHERE a.ecosystem=? AND a.package=? AND v.withdrawn=0",
                        (eco, _package_key(_base(eco), name)),
                    ):
                        if row["id"] in seen:
                            continue
                        hit, fixed = affected_version(json.loads(row["data"]), eco, version)
                        if not hit:
                            continue
                        seen.add(row["id"])
                        out.append(VulnMatch(
                            id=row["id"], component=comp.name, component_type=comp.type,
                            installed_version=comp.version,
                            aliases=tuple(json.loads(row["aliases"])), fixed_version=fixed,
                            score=row["score"], summary=row["summary"],
                        ))
        return out

