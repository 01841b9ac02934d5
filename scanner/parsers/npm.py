"""npm packages: node_modules/**/package.json (name, version, license or legacy licenses)."""

from __future__ import annotations

import json
import re
from typing import Any

from packageurl import PackageURL

from scanner.bounds import RecordBudget
from scanner.layers import FileTree
from scanner.licenses import normalize
from scanner.model import Component, OsInfo

PACKAGE_JSON = re.compile(r"(?:^|/)node_modules/(?:@[^/]+/)?[^/@][^/]*/package\.json$")


def wants_file(path: str) -> bool:
    return bool(PACKAGE_JSON.search(path))


def _license_strings(doc: dict[str, Any]) -> list[str]:
    raws: list[str] = []
    for value in (doc.get("license"), *(doc.get("licenses") or [])):
        if isinstance(value, str):
            raws.append(value)
        elif isinstance(value, dict) and isinstance(value.get("type"), str):
            raws.append(value["type"])
    return raws


def parse_package_json(data: bytes) -> Component | None:
    """A Component from a package.json; None when it is not JSON or lacks name/version."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        return None
    if not isinstance(doc, dict):
        return None
    name, version = doc.get("name"), doc.get("version")
    if not isinstance(name, str) or not isinstance(version, str) or not name or not version:
        return None
    licenses: list[str] = []
    for raw in _license_strings(doc):
        # "SEE LICENSE IN <file>" points at a file we do not read.
        if raw.upper().startswith("SEE LICENSE"):
            continue
        licenses.extend(i for i in normalize(raw) if i not in licenses)
    namespace, _, short = name.rpartition("/")
    purl = PackageURL(type="npm", namespace=namespace or None, name=short, version=version)
    return Component(name, version, "npm", tuple(licenses), purl.to_string())


def present(tree: FileTree) -> bool:
    """Whether any file of the merged tree is one this parser reads."""
    return any(PACKAGE_JSON.search(p) for p in tree.files)


def parse(tree: FileTree, os_info: OsInfo, budget: RecordBudget | None = None) -> list[Component]:
    """npm packages found in any node_modules folder."""
    budget = budget or RecordBudget(None)
    out: list[Component] = []
    seen: set[tuple[str, str]] = set()
    for path, data in sorted(tree.files.items()):
        if not PACKAGE_JSON.search(path):
            continue
        budget.take(path)
        comp = parse_package_json(data)
        if comp is None or (comp.name, comp.version) in seen:
            continue
        seen.add((comp.name, comp.version))
        out.append(comp)
    return out
