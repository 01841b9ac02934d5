"""The start-up migration of policies stored before sources named an endpoint.

Such a policy matched its repository on every registry; now it must read one. The endpoint is
chosen only when exactly one registered endpoint other than the policy's target can be it;
otherwise the policy is disabled with the reason and the candidates, for a person to decide.
"""

from __future__ import annotations

import logging

from policy_service.push_check import PushChecker
from policy_service.store import PolicyRecord
from servicekit import errors
from servicekit.retry import Backoff

log = logging.getLogger("policy_service.migration")

PREFIX = "source migration: "


def choose(rec: PolicyRecord, endpoints: list[str]) -> tuple[str, str]:
    """(the source endpoint, "") or ("", why the policy must be disabled)."""
    candidates = sorted(set(endpoints) - {rec.target_endpoint})
    if len(candidates) == 1:
        return candidates[0], ""
    if not candidates:
        why = (
            f"no endpoint other than the target {rec.target_endpoint!r} is registered, so "
            "none can be the source"
        )
    else:
        why = (
            f"{len(candidates)} endpoints could be the source ({', '.join(candidates)}); "
            "the migration does not guess"
        )
    return "", (
        f"{PREFIX}the policy was stored without a source endpoint and {why}; set "
        "source.endpoint and enable it again"
    )


async def wait_for_endpoints(checker: PushChecker, backoff: Backoff) -> list[str]:
    """The registered endpoint names, asking again until the transfer service answers."""
    attempt = 0
    while True:
        try:
            return await checker.endpoint_names()
        except errors.ApiError as err:
            log.warning(
                "source migration waits for the transfer service (try %d): %s",
                attempt + 1, err.message,
            )
        await backoff.sleep(attempt)
        attempt += 1
