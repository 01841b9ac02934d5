"""Rule errors drawn for people: the message, then the rule line with a caret under the spot."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from mirror.errors import MirrorError

_POS_RE = re.compile(r"^line (\d+), column (\d+): (.*)$", re.S)


@dataclass(frozen=True)
class Positioned:
    line: int
    column: int
    message: str
    width: int = 1


def render(rule: str, errors: Iterable[Positioned], source: str = "rule") -> str:
    """`source:LINE:COLUMN: message` then the line and a caret (1-based positions)."""
    lines = rule.splitlines() or [""]
    out: list[str] = []
    for e in errors:
        out.append(f"{source}:{e.line}:{e.column}: {e.message}")
        if 1 <= e.line <= len(lines):
            text = lines[e.line - 1]
            col = max(1, min(e.column, len(text) + 1))
            # Keep tabs so the caret lines up under tab-indented rules.
            pad = "".join(c if c == "\t" else " " for c in text[: col - 1])
            out.append(f"  {text}")
            out.append(f"  {pad}^{'~' * max(0, min(e.width, len(text) - col + 1) - 1)}")
    return "\n".join(out)


def from_validate(resp: object) -> list[Positioned]:
    """Positioned errors of a ValidateRuleResponse."""
    return [
        Positioned(e.line, e.column, _with_hint(e), max(1, len(e.offending_text)))
        for e in resp.errors  # type: ignore[attr-defined]
    ]


def _with_hint(e: object) -> str:
    msg: str = e.message  # type: ignore[attr-defined]
    suggestion = getattr(e, "suggestion", "")
    if suggestion and suggestion not in msg:
        msg += f" (did you mean {suggestion!r}?)"
    expected = list(getattr(e, "expected", []))
    if expected and "expected" not in msg.lower():
        msg += f"; expected {', '.join(expected[:8])}"
    return msg


def from_error(err: MirrorError, field_suffix: str = "rule") -> list[Positioned]:
    """Rule errors inside an INVALID_ARGUMENT's field violations (`line L, column C: ...`)."""
    out = []
    for v in err.field_violations:
        if not v.field.endswith(field_suffix):
            continue
        m = _POS_RE.match(v.description)
        if m:
            out.append(Positioned(int(m.group(1)), int(m.group(2)), m.group(3)))
    return out
