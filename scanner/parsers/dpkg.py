"""Debian packages: /var/lib/dpkg/status, status.d/* (distroless) and copyright licenses."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator

from packageurl import PackageURL

from scanner.bounds import RecordBudget
from scanner.layers import FileTree
from scanner.licenses import normalize_all
from scanner.model import Component, OsInfo
from scanner.parsers.lines import iter_lines

STATUS = "var/lib/dpkg/status"
STATUS_D = re.compile(r"^var/lib/dpkg/status\.d/[^/.]+$")
COPYRIGHT = re.compile(r"^usr/share/doc/[^/]+/copyright$")
DOC_DIR = re.compile(r"^usr/share/doc/[^/]+$")
_DEP5_FORMAT = re.compile(r"^Format:\s*\S*copyright-format", re.IGNORECASE | re.MULTILINE)
_COMMON_LICENSES = re.compile(r"/usr/share/common-licenses/([A-Za-z0-9.+-]+?)(?:[.,;)]?(?:\s|$))")
_SOURCE = re.compile(r"^(\S+)(?:\s+\((\S+)\))?$")


def wants_file(path: str) -> bool:
    return path == STATUS or bool(STATUS_D.match(path) or COPYRIGHT.match(path))


def wants_link(path: str) -> bool:
    # Some packages ship their doc folder as a symlink to another package's.
    return bool(DOC_DIR.match(path) or COPYRIGHT.match(path))


def paragraphs(text: str) -> Iterator[dict[str, str]]:
    """Paragraphs of a deb822 control file; continuation lines are joined with newlines."""
    fields: dict[str, str] = {}
    last = ""
    for line in iter_lines(text):
        if not line.strip():
            if fields:
                yield fields
            fields, last = {}, ""
            continue
        if line[0] in " \t":
            if last:
                fields[last] += "\n" + line.strip()
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        last = key.strip()
        fields[last] = value.strip()
    if fields:
        yield fields


def copyright_licenses(text: str) -> tuple[str, ...]:
    """License ids of a copyright file: DEP-5 `License:` fields, else common-licenses refs."""
    # Binary packages of one source share a copyright file: parse small ones once.
    return _cached_licenses(text) if len(text) <= 256 << 10 else _licenses(text)


@functools.lru_cache(maxsize=512)
def _cached_licenses(text: str) -> tuple[str, ...]:
    return _licenses(text)


def _licenses(text: str) -> tuple[str, ...]:
    raws: list[str] = []
    if _DEP5_FORMAT.search(text):
        for para in paragraphs(text):
            value = para.get("License")
            if value:
                raws.append(value.split("\n", 1)[0])
    else:
        raws.extend(m.group(1) for m in _COMMON_LICENSES.finditer(text))
    return normalize_all(raws)


def _installed(fields: dict[str, str]) -> bool:
    status = fields.get("Status")
    # status.d files of distroless images carry no Status line: what is listed is installed.
    return status is None or status.split()[-1:] == ["installed"]


def present(tree: FileTree) -> bool:
    """Whether the merged tree holds a dpkg database (status or status.d)."""
    return tree.get(STATUS) is not None or any(STATUS_D.match(p) for p in tree.files)


def parse(tree: FileTree, os_info: OsInfo, budget: RecordBudget | None = None) -> list[Component]:
    """Installed Debian packages of the merged tree."""
    budget = budget or RecordBudget(None)
    texts = []
    status = tree.get(STATUS)
    if status is not None:
        texts.append((STATUS, status))
    texts.extend((path, data) for path, data in sorted(tree.files.items())
                 if STATUS_D.match(path))
    namespace = os_info.id or "debian"
    distro = f"{namespace}-{os_info.version_id}" if os_info.version_id else ""
    out: list[Component] = []
    seen: set[tuple[str, str, str]] = set()
    for path, text in texts:
        for fields in paragraphs(text.decode("utf-8", "replace")):
            budget.take(path)
            name, version = fields.get("Package", ""), fields.get("Version", "")
            if not name or not version or not _installed(fields):
                continue
            arch = fields.get("Architecture", "")
            if (name, version, arch) in seen:
                continue
            seen.add((name, version, arch))
            source, source_version = name, version
            m = _SOURCE.match(fields.get("Source", ""))
            if m:
                source, source_version = m.group(1), m.group(2) or version
            qualifiers = {k: v for k, v in (("arch", arch), ("distro", distro)) if v}
            purl = PackageURL(
                type="deb", namespace=namespace, name=name, version=version,
                qualifiers=qualifiers,
            ).to_string()
            copyright_text = tree.get(f"usr/share/doc/{name}/copyright")
            licenses = (
                copyright_licenses(copyright_text.decode("utf-8", "replace"))
                if copyright_text is not None else ()
            )
            out.append(Component(name, version, "deb", licenses, purl, source, source_version))
    return out
