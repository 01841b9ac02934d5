"""Python distributions: *.dist-info/METADATA (and *.egg-info/PKG-INFO) anywhere."""

from __future__ import annotations

import re
from email.parser import BytesHeaderParser
from email.policy import compat32

from packageurl import PackageURL

from scanner.bounds import RecordBudget
from scanner.layers import FileTree
from scanner.licenses import classifier_license, normalize
from scanner.model import Component, OsInfo

METADATA = re.compile(r"(?:^|/)[^/]+\.(?:dist-info/METADATA|egg-info/PKG-INFO)$")
_NAME_NORMALIZE = re.compile(r"[-_.]+")


def wants_file(path: str) -> bool:
    return bool(METADATA.search(path))


def normalize_name(name: str) -> str:
    """PEP 503 normalized project name."""
    return _NAME_NORMALIZE.sub("-", name).lower()


def licenses_of(headers: dict[str, list[str]]) -> tuple[str, ...]:
    """License-Expression wins, then License (a short name, not a full text), then classifiers."""
    expr = headers.get("license-expression", [])
    if expr and expr[0].strip():
        return tuple(normalize(expr[0]))
    named: list[str] = []
    for value in headers.get("license", []):
        value = value.strip()
        # Many projects paste the whole license text here: only a short name is usable.
        if value and value.upper() != "UNKNOWN" and "\n" not in value and len(value) <= 80:
            named.extend(i for i in normalize(value) if i not in named)
    classified: list[str] = []
    for classifier in headers.get("classifier", []):
        spdx = classifier_license(classifier.strip())
        if spdx and spdx not in classified:
            classified.append(spdx)
    # A classifier naming a real SPDX id beats a License field SPDX does not know.
    if named and all(i.startswith("LicenseRef-") for i in named) and any(
        not i.startswith("LicenseRef-") for i in classified
    ):
        return tuple(i for i in classified if not i.startswith("LicenseRef-"))
    return tuple(named or classified)


def parse_metadata(data: bytes) -> Component | None:
    """A Component from core metadata bytes; None when Name or Version is missing."""
    msg = BytesHeaderParser(policy=compat32).parsebytes(data)
    headers: dict[str, list[str]] = {}
    for key, value in msg.items():
        headers.setdefault(key.lower(), []).append(str(value))
    name = (headers.get("name") or [""])[0].strip()
    version = (headers.get("version") or [""])[0].strip()
    if not name or not version:
        return None
    purl = PackageURL(type="pypi", name=normalize_name(name), version=version).to_string()
    return Component(name, version, "pypi", licenses_of(headers), purl)


def present(tree: FileTree) -> bool:
    """Whether any file of the merged tree is one this parser reads."""
    return any(METADATA.search(p) for p in tree.files)


def parse(tree: FileTree, os_info: OsInfo, budget: RecordBudget | None = None) -> list[Component]:
    """Python distributions installed anywhere in the image."""
    budget = budget or RecordBudget(None)
    out: list[Component] = []
    seen: set[tuple[str, str]] = set()
    for path, data in sorted(tree.files.items()):
        if not METADATA.search(path):
            continue
        budget.take(path)
        comp = parse_metadata(data)
        if comp is None or (normalize_name(comp.name), comp.version) in seen:
            continue
        seen.add((normalize_name(comp.name), comp.version))
        out.append(comp)
    return out
