"""Where blobs are known to live in each destination registry (for cross-repo mounts)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable


class BlobLocations:
    """digest -> repositories, per registry key. In memory; `on_add` may persist entries
    (call `add` with `notify=False` to load them back)."""

    def __init__(
        self,
        on_add: Callable[[str, str, str], None] | None = None,
        max_repos_per_blob: int = 8,
        max_blobs: int = 200_000,
    ) -> None:
        self._map: OrderedDict[tuple[str, str], list[str]] = OrderedDict()
        self._on_add = on_add
        self._max_repos = max_repos_per_blob
        self._max_blobs = max_blobs

    def add(self, registry: str, digest: str, repo: str, notify: bool = True) -> None:
        key = (registry, digest)
        repos = self._map.pop(key, [])
        if repo in repos:
            repos.remove(repo)
        repos.insert(0, repo)  # most recent first: the likeliest to still exist
        self._map[key] = repos[: self._max_repos]
        while len(self._map) > self._max_blobs:
            self._map.popitem(last=False)
        if notify and self._on_add is not None:
            self._on_add(registry, digest, repo)

    def forget(self, registry: str, digest: str, repo: str) -> None:
        repos = self._map.get((registry, digest))
        if repos and repo in repos:
            repos.remove(repo)

    def repos(self, registry: str, digest: str) -> list[str]:
        return list(self._map.get((registry, digest), ()))

    def load(self, entries: Iterable[tuple[str, str, str]]) -> None:
        for registry, digest, repo in entries:
            self.add(registry, digest, repo, notify=False)


class KnownSizes:
    """digest -> size, for blobs whose size this engine has verified (hashed while copying,
    or confirmed by a destination's HEAD). A digest names one content, so one size: a
    descriptor claiming another is a lie, and a mount need not be HEADed again. Bounded LRU."""

    def __init__(self, max_blobs: int = 200_000) -> None:
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._max = max_blobs

    def add(self, digest: str, size: int) -> None:
        self._sizes.pop(digest, None)
        self._sizes[digest] = size
        while len(self._sizes) > self._max:
            self._sizes.popitem(last=False)

    def get(self, digest: str) -> int | None:
        return self._sizes.get(digest)


class RecentBlobs:
    """(registry, repository, digest) of blobs this engine placed or found in a destination
    repository in the last `ttl` seconds: a later copy into that repository skips them without
    asking again (an initial sync's shared base layer, once per image). A manifest push that
    finds one gone after all (deleted, garbage-collected) makes the engine forget the
    repository's entries and place those blobs again. Bounded LRU."""

    def __init__(self, ttl: float = 300.0, max_entries: int = 100_000) -> None:
        self.ttl = ttl
        self._seen: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._max = max_entries

    def add(self, registry: str, repo: str, digest: str) -> None:
        key = (registry, repo, digest)
        self._seen.pop(key, None)
        self._seen[key] = time.monotonic()
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)

    def holds(self, registry: str, repo: str, digest: str) -> bool:
        at = self._seen.get((registry, repo, digest))
        return at is not None and time.monotonic() - at < self.ttl

    def forget(self, registry: str, repo: str, digests: Iterable[str]) -> None:
        for d in digests:
            self._seen.pop((registry, repo, d), None)
