"""Compile errors of the rule language, positioned in the rule text."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RuleErrorInfo:
    """One compile error. ``line`` and ``column`` are 1-based, counted in characters."""

    line: int
    column: int
    message: str
    offending_text: str = ""
    expected: tuple[str, ...] = ()
    suggestion: str = ""

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: {self.message}"


class RuleCompileError(ValueError):
    """A rule did not compile; ``errors`` holds every problem found (at least one)."""

    def __init__(self, errors: list[RuleErrorInfo]) -> None:
        if not errors:
            raise ValueError("RuleCompileError needs at least one error")
        self.errors = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors))


def position(text: str, index: int) -> tuple[int, int]:
    """1-based (line, column) of character ``index`` in ``text``."""
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return line, column
