"""Opaque page tokens for List RPCs (AIP-158)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping

from servicekit.errors import invalid_argument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    """The page size to use: default when 0, capped at MAX_PAGE_SIZE, never negative."""
    if requested < 0:
        raise invalid_argument("page_size must not be negative", [("page_size", "negative")])
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def encode_token(state: dict[str, object]) -> str:
    raw = json.dumps(state, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(
    token: str, *, expect: Mapping[str, object] | None = None
) -> dict[str, object]:
    """Decode a page token; INVALID_ARGUMENT when it is not one of ours or the filter changed."""
    if not token:
        return {}
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        state = json.loads(raw)
        if not isinstance(state, dict):
            raise ValueError
    except ValueError as exc:
        raise invalid_argument(
            "page_token is not valid; pass the next_page_token of a previous response",
            [("page_token", "malformed")],
        ) from exc
    for key, value in (expect or {}).items():
        if state.get(key) != value:
            raise invalid_argument(
                "page_token was issued for a different filter",
                [("page_token", f"filter {key!r} changed")],
            )
    return state
