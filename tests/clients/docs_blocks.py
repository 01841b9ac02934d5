"""Fenced code blocks of README.md and docs/, extracted so tests can run them verbatim."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

_FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.S | re.M)


def _section(text: str, heading: str) -> str:
    """The text under `## heading` up to the next `## ` heading."""
    start = re.search(rf"^## {re.escape(heading)}\n", text, re.M)
    if start is None:
        raise LookupError(f"no section '## {heading}'")
    end = re.search(r"^## ", text[start.end():], re.M)
    return text[start.end(): start.end() + end.start() if end else len(text)]


def blocks(name: str, language: str, section: str | None = None) -> list[str]:
    """Every ```language block of NAME (README.md at the root, else docs/NAME), in order;
    with `section`, only those under that `## ` heading."""
    path = ROOT / name if name == "README.md" else DOCS / name
    text = path.read_text()
    if section is not None:
        text = _section(text, section)
    return [body for lang, body in _FENCE.findall(text) if lang == language]


def run_bash(
    script: str, env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a shell block as a user would paste it, stopping at the first failing command."""
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], env=env, cwd=str(cwd),
        capture_output=True, text=True, timeout=timeout,
    )


def json_stream(text: str) -> list[Any]:
    """The JSON objects grpcurl prints one after another for a stream."""
    decoder, out, pos = json.JSONDecoder(), [], 0
    text = text.strip()
    while pos < len(text):
        obj, end = decoder.raw_decode(text, pos)
        out.append(obj)
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out
