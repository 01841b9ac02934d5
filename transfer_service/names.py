"""Syntax of repository names, tags and digests (OCI distribution spec)."""

from __future__ import annotations

import re

# Separators are always followed by an alphanumeric run, so the pattern cannot backtrack badly.
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
REPOSITORY_RE = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
SHA256_RE = re.compile(r"sha256:[a-f0-9]{64}")
MAX_REPOSITORY_LEN = 255


def repository_problem(name: str) -> str | None:
    """Why `name` is not a valid repository name, or None when it is."""
    if not name:
        return "required"
    if len(name) > MAX_REPOSITORY_LEN:
        return f"longer than {MAX_REPOSITORY_LEN} characters"
    if not REPOSITORY_RE.fullmatch(name):
        return (
            f"{name!r} is not a valid repository name: lowercase letters and digits, "
            "separated by '.', '_', '__' or '-', components joined by '/'"
        )
    return None


def tag_problem(tag: str) -> str | None:
    """Why `tag` is not a valid tag, or None when it is."""
    if not TAG_RE.fullmatch(tag):
        return f"{tag!r} is not a valid tag: [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}"
    return None


def reference_problem(ref: str) -> str | None:
    """Why `ref` is neither a tag nor a digest, or None when it is one of them."""
    if not ref:
        return "required: a tag or a digest"
    if ":" in ref:
        if ref.startswith("sha256:") and not SHA256_RE.fullmatch(ref):
            return f"{ref!r} is not a valid sha256 digest (64 lowercase hex digits)"
        if not DIGEST_RE.fullmatch(ref):
            return f"{ref!r} is not a valid digest"
        return None
    return tag_problem(ref)
