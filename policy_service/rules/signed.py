"""`signed` and `signed_by "KEY"`: tests over the image's verified signatures, and the words
an explanation uses for them.

The rule language does not verify anything: the policy service fills each signature's
``verified_by`` (trusted key names) and ``problem`` before the rule runs, and these tests only
read them. Anything with those attributes works (``facts.SignatureFact``, or the proto).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from policy_service.rules.facts import Facts

# An explanation names at most this many distinct problems, each cut to PROBLEM_CHARS: the
# facts of EvaluateRule come from the caller, and an explanation must stay small.
MAX_PROBLEMS = 4
PROBLEM_CHARS = 200
NO_SIGNATURE = "no signature"
NOT_VERIFIED = "not verified"


def signed_test(key: str | None) -> Callable[[Facts], bool]:
    """The predicate of ``signed`` (key None) or ``signed_by key``."""
    if key is None:
        def any_key(facts: Facts) -> bool:
            for sig in facts.signatures:  # noqa: SIM110 - a plain loop beats any(<generator>)
                if sig.verified_by:
                    return True
            return False
        return any_key

    def by_key(facts: Facts) -> bool:
        for sig in facts.signatures:  # noqa: SIM110
            if key in sig.verified_by:
                return True
        return False
    return by_key


def _names(names: Iterable[str]) -> str:
    return ", ".join(json.dumps(n, ensure_ascii=False) for n in names)


def _problems(signatures: Sequence[Any]) -> str:
    problems = list(dict.fromkeys(
        (sig.problem or NOT_VERIFIED)[:PROBLEM_CHARS] for sig in signatures
    ))
    text = "; ".join(problems[:MAX_PROBLEMS])
    if len(problems) > MAX_PROBLEMS:
        text += f"; and {len(problems) - MAX_PROBLEMS} more"
    return text


def describe(signatures: Sequence[Any], key: str | None) -> str:
    """What an explanation says about the signatures for ``signed`` / ``signed_by key``:
    the key that verified, or why none did."""
    if not signatures:
        return NO_SIGNATURE
    verified = list(dict.fromkeys(n for sig in signatures for n in sig.verified_by))
    if key is None and verified:
        return f"verified by {_names(verified)}"
    if key is not None and key in verified:
        return f"verified by {_names([key])}"
    if verified:  # key is not None here: trusted keys verified, but not the one named
        return f"signed by another key: verified by {_names(verified)}"
    count = f"{len(signatures)} signatures, " if len(signatures) > 1 else ""
    return f"{count}none verified: {_problems(signatures)}"
