"""Checks of policy fields that do not need the rule language: names, globs, time zones."""

from __future__ import annotations

import re
from zoneinfo import ZoneInfo

from registry_client.names import COMPONENT_RE, REPOSITORY_RE

# Transfer-service endpoint names: lowercase letters, digits, '-' and '_'.
ENDPOINT_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
MAX_REPOSITORY_LENGTH = 255
MAX_NAME_LENGTH = 200

Violation = tuple[str, str]


def is_glob(source: str) -> bool:
    return "*" in source


def repository_error(name: str) -> str | None:
    """Why `name` is not a valid OCI repository name, or None when it is."""
    if not name:
        return "must not be empty"
    if len(name) > MAX_REPOSITORY_LENGTH:
        return f"longer than {MAX_REPOSITORY_LENGTH} characters"
    if not REPOSITORY_RE.fullmatch(name):
        return (
            f"{name!r} is not a valid repository name (lowercase path components of letters "
            "and digits separated by '.', '_', '__' or '-', joined by '/')"
        )
    return None


def source_error(source: str) -> str | None:
    """Why `source` is neither a repository name nor a valid glob, or None.

    In a glob, `**` must be a whole path segment (any number of segments) and `*` matches
    within one segment; each segment must otherwise be a valid name component.
    """
    if not is_glob(source):
        return repository_error(source)
    if len(source) > MAX_REPOSITORY_LENGTH:
        return f"longer than {MAX_REPOSITORY_LENGTH} characters"
    segments = source.split("/")
    for i, seg in enumerate(segments):
        if seg == "**":
            if i > 0 and segments[i - 1] == "**":
                return f"{source!r}: '**/**' is redundant; use one '**'"
            continue
        if "**" in seg:
            return f"{source!r}: '**' must be a whole path segment, as in 'dev/**'"
        # A '*' stands for some letters; the segment must still be a name component.
        if not COMPONENT_RE.fullmatch(seg.replace("*", "a")):
            return f"{source!r}: segment {seg!r} is not a valid repository name component"
    return None


def time_zone_error(name: str) -> str | None:
    """Why `name` is not an IANA time zone, or None (empty means UTC)."""
    if not name:
        return None
    try:
        ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        return f"unknown time zone {name!r}; use an IANA name such as 'Europe/Paris'"
    return None


def zone(name: str) -> ZoneInfo:
    """The ZoneInfo for a validated time zone name; empty means UTC."""
    return ZoneInfo(name or "UTC")


def name_error(name: str) -> str | None:
    if not name.strip():
        return "must not be empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"longer than {MAX_NAME_LENGTH} characters"
    if name != name.strip():
        return "must not start or end with spaces"
    return None


def endpoint_error(endpoint: str) -> str | None:
    if not endpoint:
        return "must not be empty: name a transfer-service endpoint"
    if not ENDPOINT_RE.fullmatch(endpoint):
        return f"{endpoint!r} is not an endpoint name (lowercase letters, digits, '-' and '_')"
    return None
