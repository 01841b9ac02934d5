"""os-release (/etc/os-release, else /usr/lib/os-release) to OsInfo."""

from __future__ import annotations

import shlex

from scanner.layers import FileTree
from scanner.model import OsInfo

PATHS = ("etc/os-release", "usr/lib/os-release")


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=VALUE lines with shell quoting; comments and malformed lines are skipped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            parts = shlex.split(value)
        except ValueError:
            continue
        out[key.strip()] = parts[0] if parts else ""
    return out


def detect_os(tree: FileTree) -> OsInfo:
    """The image's OS from os-release (empty OsInfo when there is none)."""
    for path in PATHS:
        data = tree.get(path)
        if data is None:
            continue
        fields = parse_os_release(data.decode("utf-8", "replace"))
        return OsInfo(
            id=fields.get("ID", ""),
            version_id=fields.get("VERSION_ID", ""),
            pretty_name=fields.get("PRETTY_NAME", ""),
            version_codename=fields.get("VERSION_CODENAME", ""),
        )
    return OsInfo()
