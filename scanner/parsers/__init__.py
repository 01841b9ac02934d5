"""Package-database parsers and the selector of files they need from the layers."""

from __future__ import annotations

from scanner.layers import FileTree, Selector
from scanner.model import Component, OsInfo
from scanner.parsers import apk, dpkg, npm, osrelease, python

_PARSERS = (dpkg, apk, python, npm)


def _wants_file(path: str) -> bool:
    return path in osrelease.PATHS or any(p.wants_file(path) for p in _PARSERS)


def _wants_link(path: str) -> bool:
    return path in osrelease.PATHS or dpkg.wants_link(path)


SELECTOR = Selector(wants_file=_wants_file, wants_link=_wants_link)


def extract(tree: FileTree) -> tuple[OsInfo, list[Component]]:
    """The OS and every component found in the merged tree."""
    os_info = osrelease.detect_os(tree)
    components: list[Component] = []
    for parser in _PARSERS:
        components.extend(parser.parse(tree, os_info))
    return os_info, components
