"""`tag semver ">=1.25 <2"`: a string read as a semantic version, tested against a range.

Versions are parsed by python-semver (semver.org's grammar: no leading zeros, dot-separated
pre-release identifiers), with two allowances for container tags: a leading ``v`` and missing
minor/patch numbers (``1.25`` is 1.25.0). A range only compares the release numbers
(major.minor.patch): what follows them (``-alpine``, ``-rc.1``) names a variant or a
pre-release and takes no part, so ``1.25.3-alpine`` is 1.25.3 to a range and matches
``>=1.25 <2`` and ``>=1.25.3``, but not ``<1.25.3``.

A range is comparators separated by white space (all must hold) and alternatives separated by
``||`` (one must hold). A comparator is an operator (``>=``, ``>``, ``<``, ``<=``, ``=``,
``!=``; none means ``=``) and a version, which may be partial: a partial version compares only
the numbers it gives, as npm's X-ranges do (``<=1.25`` holds for 1.25.9, ``>1.25`` starts at
1.26.0, ``=1`` is any 1.x.y, ``!=1.25`` excludes every 1.25.z).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import semver

# A longer string is no version anyone tags with; refusing it bounds the parser's work.
MAX_VERSION_CHARS = 256

# Longest first, so that ">=" is not read as ">" followed by "=1".
_OPERATORS: dict[str, Callable[[tuple[int, ...], tuple[int, ...]], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "!=": operator.ne,
    "==": operator.eq,
    ">": operator.gt,
    "<": operator.lt,
    "=": operator.eq,
}
OPERATOR_WORDS = (">=", ">", "<", "<=", "=", "!=")


class RangeError(ValueError):
    """A range that does not parse; ``offset``/``length`` locate the problem in its text
    (``offset`` None: the whole text, e.g. an empty range)."""

    def __init__(self, message: str, offset: int | None, length: int = 1) -> None:
        super().__init__(message)
        self.offset = offset
        self.length = max(1, length)


def _parse(text: str) -> semver.Version | None:
    if len(text) > MAX_VERSION_CHARS:
        return None
    if text[:1] == "v":
        text = text[1:]
    try:
        return semver.Version.parse(text, optional_minor_and_patch=True)
    except (ValueError, TypeError):  # ValueError also for numbers past int()'s digit limit
        return None


@functools.lru_cache(maxsize=4096)
def release_of(value: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of a tag such as ``v1.25.3-alpine``; None when it is not a
    version. Cached: many policies test the same tag."""
    version = _parse(value)
    return None if version is None else (version.major, version.minor, version.patch)


@dataclass(frozen=True)
class Comparator:
    """``op`` applied to the first ``len(numbers)`` release numbers of a version."""

    op: str
    numbers: tuple[int, ...]

    def holds(self, release: tuple[int, int, int]) -> bool:
        return _OPERATORS[self.op](release[: len(self.numbers)], self.numbers)

    def __str__(self) -> str:
        return self.op + ".".join(map(str, self.numbers))


_Check = tuple[Callable[[tuple[int, ...], tuple[int, ...]], bool], int, tuple[int, ...]]


@dataclass(frozen=True)
class VersionRange:
    """A parsed range; calling it on a string says whether that string is a version in it."""

    text: str
    alternatives: tuple[tuple[Comparator, ...], ...]
    # (operator function, numbers given, numbers) per comparator: what `contains` runs, with
    # no method call or generator per comparator (a rule runs once per policy and image).
    _checks: tuple[tuple[_Check, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        checks = tuple(tuple((_OPERATORS[c.op], len(c.numbers), c.numbers) for c in alt)
                       for alt in self.alternatives)
        object.__setattr__(self, "_checks", checks)

    def contains(self, release: tuple[int, int, int]) -> bool:
        for alt in self._checks:
            for compare, given, numbers in alt:
                if not compare(release[:given], numbers):
                    break
            else:
                return True
        return False

    def __call__(self, value: str) -> bool:
        release = release_of(value)
        return release is not None and self.contains(release)


def _version_numbers(text: str, offset: int) -> tuple[int, ...]:
    """The numbers of a range's version (leading ``v`` allowed), or RangeError."""
    version = _parse(text)
    if version is None:
        raise RangeError(f"{text!r} is not a version (expected e.g. 1, 1.25 or 1.25.3)",
                         offset, len(text))
    if version.prerelease or version.build:
        raise RangeError(
            f"{text!r}: a range compares release numbers only (a tag's suffix such as "
            "'-alpine' or '-rc.1' takes no part); drop what follows the numbers",
            offset, len(text))
    given = text.lstrip("v").count(".") + 1
    return (version.major, version.minor, version.patch)[:given]


def parse_range(text: str) -> VersionRange:
    """Parse a range such as ``>=1.25 <2 || 3.1.4``; RangeError says what and where."""
    alternatives: list[tuple[Comparator, ...]] = []
    current: list[Comparator] = []
    i, n = 0, len(text)
    last_bar = 0
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n or text.startswith("||", i):
            if not current and not text.strip():
                raise RangeError("the range is empty; expected a comparator such as >=1.25",
                                 None)
            if not current:
                raise RangeError("an empty alternative; expected a comparator such as >=1.25",
                                 i if i < n else last_bar, 2)
            alternatives.append(tuple(current))
            current = []
            if i >= n:
                break
            last_bar = i
            i += 2
            continue
        start = i
        op = next((o for o in _OPERATORS if text.startswith(o, i)), "")
        i += len(op)
        while i < n and text[i].isspace():
            i += 1
        end = i
        while end < n and not text[end].isspace() and text[end] not in "|<>=!":
            end += 1
        word = text[i:end]
        if not word:
            found = repr(text[i]) if i < n else "the end of the range"
            if op:
                message = f"expected a version after {op!r}, found {found}"
            elif text[i] == "|":
                message = "'|' alone: alternatives are separated by '||'"
            else:
                message = (f"unexpected {found}; expected a comparator "
                           f"({', '.join(OPERATOR_WORDS)} and a version)")
            raise RangeError(message, i if i < n else start, 1)
        current.append(Comparator("=" if op in ("", "==") else op, _version_numbers(word, i)))
        i = end
    return VersionRange(text, tuple(alternatives))
