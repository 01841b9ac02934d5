"""What one poll knows of its destinations' tags: each destination repository listed once.

Deciding a new source tag includes asking whether the destination tag already holds the image
(then the run is "up to date"). For a poll that brings many new tags of one repository, one
tag listing of the destination answers that for all of them, where a HEAD per tag would cost
one request each: an initial sync into an empty registry asks each repository once. A tag the
listing has is still HEADed for its digest; a tag it lacks is absent as of the listing (a tag
written since is the transfer's business: `fail_if_tag_exists` checks again when it matters).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from registry_client import errors as rc_errors

log = logging.getLogger("gateway.dest_tags")

# A repository's destination is listed when a poll decides at least this many of its tags
# (below, HEADs cost no more than the listing's pages).
LIST_FROM_TAGS = 3


class DestinationTags:
    """Destination repositories' tags, each listed at most once (the first time asked)."""

    def __init__(self, resolver: Any) -> None:
        self._resolver = resolver
        self._lists: dict[tuple[str, str], asyncio.Task[frozenset[str] | None]] = {}

    async def listed(self, endpoint: str, repository: str) -> frozenset[str] | None:
        """The repository's tags (none when it does not exist yet); None when unreadable."""
        key = (endpoint, repository)
        task = self._lists.get(key)
        if task is None:
            task = asyncio.create_task(self._list(endpoint, repository))
            self._lists[key] = task
        return await asyncio.shield(task)

    async def _list(self, endpoint: str, repository: str) -> frozenset[str] | None:
        try:
            async with self._resolver.client_for(endpoint) as rc:
                return frozenset(await rc.list_tags(repository))
        except rc_errors.NotFound:
            return frozenset()
        except Exception as exc:  # each tag is HEADed instead
            log.info("cannot list %s/%s: %s", endpoint, repository, exc)
            return None

    def close(self) -> None:
        for task in self._lists.values():
            task.cancel()
