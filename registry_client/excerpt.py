"""Short, safe excerpts of what remote servers say, and URLs without their userinfo.

A remote error body may be anything: a 64 KB HTML page, control characters that rewrite a
terminal, text meant to look like our own messages. Only a bounded first line of it, with
control characters removed, reaches error messages (which read-only callers can see).
"""

from __future__ import annotations

import re

EXCERPT_CHARS = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]+")
_CODE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
# `scheme://` (optional: "user:pw@host" has none) then the authority up to its last `@`.
_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)?[^/?#]*@")


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """The first non-empty line of `text`, control characters removed, at most `limit` chars."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = _CONTROL.sub(" ", line).strip()
    if len(line) > limit:
        line = line[: limit - 1].rstrip() + "…"
    return line


def error_code(value: object) -> str:
    """A registry error code (`MANIFEST_UNKNOWN`) if `value` looks like one, else ''."""
    text = str(value or "")
    return text if _CODE.match(text) else ""


def strip_userinfo(url: str) -> str:
    """`url` without `user:password@` (for messages and logs), also when it has no scheme or
    does not parse; anything else passes unchanged. The one place URLs are redacted."""
    return _USERINFO.sub(lambda m: m.group("scheme") or "", url, count=1)
