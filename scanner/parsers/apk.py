"""Alpine packages: /lib/apk/db/installed (P: name, V: version, L: license, o: origin)."""

from __future__ import annotations

from collections.abc import Iterator

from packageurl import PackageURL

from scanner.bounds import RecordBudget
from scanner.layers import FileTree
from scanner.licenses import normalize
from scanner.model import Component, OsInfo
from scanner.parsers.lines import iter_lines

INSTALLED = "lib/apk/db/installed"


def wants_file(path: str) -> bool:
    return path == INSTALLED


def _records(text: str) -> Iterator[dict[str, str]]:
    rec: dict[str, str] = {}
    for line in iter_lines(text):
        if not line.strip():
            if rec:
                yield rec
            rec = {}
            continue
        key, sep, value = line.partition(":")
        # Only the first occurrence matters for the fields we read (F:/R: repeat per file).
        if sep and len(key) == 1 and key not in rec:
            rec[key] = value
    if rec:
        yield rec


def present(tree: FileTree) -> bool:
    """Whether the merged tree holds an apk database."""
    return tree.get(INSTALLED) is not None


def _licenses(raw: str) -> tuple[str, ...]:
    ids = normalize(raw)
    if any(i.startswith("LicenseRef-") for i in ids) and " " in raw.strip():
        # Old apk databases list licenses separated by spaces, without AND/OR.
        split: list[str] = []
        for word in raw.split():
            for i in normalize(word):
                if i not in split:
                    split.append(i)
        return tuple(split)
    return tuple(ids)


def parse(tree: FileTree, os_info: OsInfo, budget: RecordBudget | None = None) -> list[Component]:
    """Installed Alpine packages."""
    budget = budget or RecordBudget(None)
    data = tree.get(INSTALLED)
    if data is None:
        return []
    namespace = os_info.id or "alpine"
    out: list[Component] = []
    for rec in _records(data.decode("utf-8", "replace")):
        budget.take(INSTALLED)
        name, version = rec.get("P", ""), rec.get("V", "")
        if not name or not version:
            continue
        qualifiers = {
            k: v for k, v in (("arch", rec.get("A", "")), ("distro", os_info.version_id)) if v
        }
        purl = PackageURL(
            type="apk", namespace=namespace, name=name, version=version, qualifiers=qualifiers
        ).to_string()
        out.append(
            Component(
                name, version, "apk", _licenses(rec.get("L", "")), purl,
                rec.get("o", "") or name, version,
            )
        )
    return out
