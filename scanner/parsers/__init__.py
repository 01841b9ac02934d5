"""Package-database parsers and the selector of files they need from the layers."""

from __future__ import annotations

from scanner.bounds import RecordBudget
from scanner.layers import FileTree, Selector
from scanner.model import Component, OsInfo
from scanner.parsers import apk, dpkg, npm, osrelease, python

_PARSERS = (dpkg, apk, python, npm)


def _wants_file(path: str) -> bool:
    return path in osrelease.PATHS or any(p.wants_file(path) for p in _PARSERS)


def _wants_link(path: str) -> bool:
    return path in osrelease.PATHS or dpkg.wants_link(path)


SELECTOR = Selector(wants_file=_wants_file, wants_link=_wants_link)


def recognised(tree: FileTree) -> bool:
    """Whether any package database a parser reads is in the merged tree.

    False means the image's components are unknown (a scratch image with a static binary,
    a distro we do not parse), which is not the same as "no components".
    """
    return any(p.present(tree) for p in _PARSERS)


def extract(
    tree: FileTree, budget: RecordBudget | None = None
) -> tuple[OsInfo, list[Component]]:
    """The OS and every component found in the merged tree (records counted on `budget`)."""
    budget = budget or RecordBudget(None)
    os_info = osrelease.detect_os(tree)
    components: list[Component] = []
    for parser in _PARSERS:
        components.extend(parser.parse(tree, os_info, budget))
    return os_info, components
