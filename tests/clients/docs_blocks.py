"""Fenced code blocks of the docs, extracted so tests can run them verbatim."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"

_FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)


def blocks(name: str, language: str) -> list[str]:
    """Every ```language block of docs/NAME, in order."""
    text = (DOCS / name).read_text()
    return [body for lang, body in _FENCE.findall(text) if lang == language]
