"""RE2 regular expressions for ``matches``: linear time, compiled once per rule."""

from __future__ import annotations

from collections.abc import Callable

import re2


class RegexError(ValueError):
    """The pattern is not a valid RE2 regular expression."""


def compile_search(pattern: str) -> Callable[[str], bool]:
    """A predicate telling whether ``pattern`` matches anywhere in a string (RE2 partial
    match, like CEL's ``matches``); raises RegexError with RE2's reason."""
    options = re2.Options()
    options.log_errors = False  # the reason goes to the user, not to stderr
    options.never_capture = True  # only "does it match" is asked
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise RegexError(str(reason)) from None
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
