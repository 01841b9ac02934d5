"""Where the vulnerability data came from: per OSV ecosystem, its record count and when it was
last imported; and the one question rules depend on, "how fresh is the data this image used".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from servicekit.db import Database

# A time that cannot be read is taken as very old: stale data blocks, it never passes.
_UNREADABLE = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time(text: str) -> datetime:
    """An ISO / RFC 3339 time as an aware UTC datetime (the epoch when unreadable)."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return _UNREADABLE
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Source:
    name: str
    records: int
    update_time: datetime


class SourceTable:
    """The `vuln_sources` table and meta 'update_time', mirrored in memory for matching."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._sources: dict[str, Source] = {}
        self._update_time: datetime | None = None
        self.reload()

    def reload(self) -> None:
        rows = self.db.query("SELECT name, records, update_time FROM vuln_sources")
        # Replaced whole, so a scan reading it in another thread sees one state or the other.
        self._sources = {
            r["name"]: Source(r["name"], int(r["records"]), parse_time(r["update_time"]))
            for r in rows
        }
        row = self.db.query_one("SELECT value FROM meta WHERE key='update_time'")
        self.update_text: str | None = row["value"] if row else None
        self._update_time = parse_time(row["value"]) if row else None

    @property
    def update_time(self) -> datetime | None:
        """When the newest import that held valid records ran; None: never."""
        return self._update_time

    def sources(self) -> list[Source]:
        return sorted(self._sources.values(), key=lambda s: s.name)

    def record_import(self, fresh: set[str], recount: set[str], now: datetime) -> None:
        """After an import: `fresh` ecosystems were in it (their time is now), `recount` may
        have gained or lost records (replaced records can move between ecosystems)."""
        stamp = now.isoformat()
        with self.db.transaction() as c:
            for name in sorted(fresh | recount):
                n = c.execute(
                    "SELECT COUNT(DISTINCT vuln_id) FROM affected WHERE ecosystem=?", (name,)
                ).fetchone()[0]
                if not n:
                    c.execute("DELETE FROM vuln_sources WHERE name=?", (name,))
                elif name in fresh:
                    c.execute(
                        "INSERT INTO vuln_sources (name, records, update_time) VALUES (?, ?, ?)"
                        " ON CONFLICT(name) DO UPDATE SET records=excluded.records,"
                        " update_time=excluded.update_time",
                        (name, n, stamp),
                    )
                else:
                    c.execute("UPDATE vuln_sources SET records=? WHERE name=?", (n, name))
            c.execute(
                "INSERT INTO meta (key, value) VALUES ('update_time', ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (stamp,),
            )
        self.reload()

    def data_time(self, needs: Iterable[list[str]]) -> datetime | None:
        """How fresh the data is for components needing these ecosystems (each entry: the
        ecosystems one component may be in, any one of them will do).

        The oldest of the sources used; None when nothing was imported, or when some needed
        ecosystem has no records at all (a zero count there would mean "not looked at", not
        "no vulnerabilities"). Components of no known ecosystem need nothing.
        """
        if self._update_time is None:
            return None
        sources = self._sources
        oldest: datetime | None = None
        for group in {tuple(g) for g in needs}:
            if not group:
                continue
            have = [sources[e].update_time for e in group if e in sources]
            if not have:
                return None
            newest = max(have)
            oldest = newest if oldest is None or newest < oldest else oldest
        return oldest if oldest is not None else self._update_time


__all__ = ["Source", "SourceTable", "parse_time"]
