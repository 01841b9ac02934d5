"""Syntax of repository names, tags and digests (OCI distribution spec): the one copy every
service checks against."""

from __future__ import annotations

import re

# Separators are always followed by an alphanumeric run, so the pattern cannot backtrack badly.
COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
COMPONENT_RE = re.compile(COMPONENT)
REPOSITORY_RE = re.compile(rf"{COMPONENT}(?:/{COMPONENT})*")
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
MAX_REPOSITORY_LEN = 255
# Registered algorithms and the exact length of their lowercase hex encoding.
HEX_LENGTHS = {"sha256": 64, "sha512": 128}


def is_repository(name: str) -> bool:
    return len(name) <= MAX_REPOSITORY_LEN and bool(REPOSITORY_RE.fullmatch(name))


def is_tag(tag: str) -> bool:
    return bool(TAG_RE.fullmatch(tag))


def is_digest(ref: str) -> bool:
    """The digest grammar; a registered algorithm also needs its exact hex length."""
    if not DIGEST_RE.fullmatch(ref):
        return False
    algo, _, enc = ref.partition(":")
    want = HEX_LENGTHS.get(algo)
    return want is None or (len(enc) == want and all(c in "0123456789abcdef" for c in enc))


def is_verifiable_digest(ref: str) -> bool:
    """A digest of an algorithm this project can verify (sha256, sha512)."""
    return ref.partition(":")[0] in HEX_LENGTHS and is_digest(ref)


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
    if not is_tag(tag):
        return f"{tag!r} is not a valid tag: [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}"
    return None


def reference_problem(ref: str) -> str | None:
    """Why `ref` is neither a tag nor a digest, or None when it is one of them."""
    if not ref:
        return "required: a tag or a digest"
    if ":" in ref:
        if ref.startswith("sha256:") and not is_digest(ref):
            return f"{ref!r} is not a valid sha256 digest (64 lowercase hex digits)"
        if not is_digest(ref):
            return f"{ref!r} is not a valid digest"
        return None
    return tag_problem(ref)
