"""RE2 regular expressions for ``matches``: linear time, compiled once per rule, within a budget.

RE2 runs in time linear in the text, but compiling a pattern and its lazily built DFA cost
memory and time that grow with the pattern's *program size* (RE2 instructions): ``\\pL{10}``
is already about 12,000 instructions. A rule is untrusted input (any read-only token may send
one to ValidateRule), so each regex and the rule as a whole get a budget of instructions, and
RE2 itself is told a memory ceiling that bounds both compilation and each search's DFA cache.
"""

from __future__ import annotations

from collections.abc import Callable

import re2

# RE2 instructions one regex may compile to. Everyday patterns are far below: a semantic
# version with pre-release and build parts is 60, `^sha256:[a-f0-9]{64}$` 132, `.{1000}` 8,004.
MAX_REGEX_PROGRAM = 10_000
# Instructions for all regexes of one rule together.
MAX_RULE_PROGRAM = 40_000
# `matches` comparisons in one rule.
MAX_REGEXES = 32
# RE2's own ceiling per regex (compiled programs plus DFA cache): 1 MiB fits a forward and a
# reverse program of MAX_REGEX_PROGRAM with room to spare (measured: reverse programs up to
# about 21,000 instructions) and makes RE2 stop compiling anything far larger after ~3 ms.
RE2_MAX_MEM = 1 << 20


class RegexError(ValueError):
    """The pattern is not a valid RE2 regular expression."""


class RegexTooLarge(RegexError):
    """The pattern is valid but over its program-size budget (or the rule's)."""


class RegexBudget:
    """Instructions left for the regexes of one rule; ``charge`` refuses what does not fit."""

    def __init__(self, per_regex: int = MAX_REGEX_PROGRAM, total: int = MAX_RULE_PROGRAM) -> None:
        self.per_regex = per_regex
        self.total = total
        self.used = 0

    @property
    def exhausted(self) -> bool:
        return self.used > self.total

    def charge(self, size: int | None) -> None:
        """Account one compiled program (None: RE2 refused it as too large to compile)."""
        if size is None or size > self.per_regex:
            # An oversized regex counts at more than its budget, so a rule of many oversized
            # ones stops being compiled after a few.
            self.used += self.per_regex + 1
            shown = "over RE2's memory limit" if size is None else f"{size:,}"
            raise RegexTooLarge(
                f"regex too large: program size {shown} > {self.per_regex:,} "
                "(RE2 instructions; use fewer or smaller repetitions and character classes)"
            )
        self.used += size
        if self.used > self.total:
            raise RegexTooLarge(
                f"regexes too large in total: program size {self.used:,} > {self.total:,} for "
                "the whole rule (later regexes were not compiled)"
            )


def _options() -> re2.Options:
    options = re2.Options()
    options.log_errors = False  # the reason goes to the user, not to stderr
    options.never_capture = True  # only "does it match" is asked
    options.max_mem = RE2_MAX_MEM
    return options


def compile_search(pattern: str, budget: RegexBudget | None = None) -> Callable[[str], bool]:
    """A predicate telling whether ``pattern`` matches anywhere in a string (RE2 partial
    match, like CEL's ``matches``); raises RegexError with RE2's reason, RegexTooLarge when
    the pattern is over ``budget`` (a fresh one when None)."""
    budget = budget if budget is not None else RegexBudget()
    try:
        compiled = re2.compile(pattern, _options())
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        if "pattern too large" in str(reason):
            budget.charge(None)
        raise RegexError(str(reason)) from None
    # Partial matches need the reverse program too (to find where a match starts); build it
    # now so that one too large for RE2's memory is refused here, not silently unmatched later.
    forward, reverse = compiled.programsize, compiled.reverseprogramsize
    budget.charge(max(forward, reverse) if reverse >= 0 else None)
    # The wrapper's public search() builds match objects and maps byte offsets back to
    # characters (about 5 us a call); asking the underlying RE2 object directly takes about
    # 1 us. That object is not public API, so fall back when a google-re2 release changes it.
    regexp = getattr(compiled, "_regexp", None)
    anchor = getattr(getattr(getattr(re2, "_re2", None), "RE2", None), "Anchor", None)
    if regexp is None or anchor is None or not hasattr(regexp, "Match"):
        return lambda text: compiled.search(text) is not None
    unanchored = anchor.UNANCHORED
    match = regexp.Match

    def search(text: str) -> bool:
        data = text.encode("utf-8", "surrogatepass")
        return match(unanchored, data, 0, len(data))[0][0] != -1

    return search
