"""Which policies apply to a repository: exact names in a dict, globs in RE2 sets.

Globs are grouped by their first path segment when it is literal ("dev/**" goes to the
"dev" bucket); globs that start with a wildcard share one bucket. A lookup therefore
consults one dict entry, one bucket's RE2 set and the wildcard bucket's set, never every
policy. RE2 sets match all of a bucket's patterns in one pass over the name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import re2

from policy_service.validate import is_glob

_WILDCARD_BUCKET = ""


def glob_to_regex(glob: str) -> str:
    """A regular expression (RE2 syntax, to be fully matched) for a source glob.

    `*` matches within one path segment; a `**` segment matches any number of segments:
    `dev/**` everything below dev, `**/website` website at any depth, `a/**/b` also `a/b`.
    """
    segments = glob.split("/")
    out: list[str] = []
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        if seg == "**":
            if last == 0:
                out.append(".+")
            elif i == 0:
                out.append("(?:[^/]+/)*")
            elif i == last:
                out.append("/.+")
            else:
                out.append("/(?:[^/]+/)*")
            continue
        if i > 0 and segments[i - 1] != "**":
            out.append("/")
        if seg == "*":
            out.append("[^/]+")
        else:
            out.append("[^/]*".join(re.escape(part) for part in seg.split("*")))
    return "".join(out)


def _bucket_of(glob: str) -> str:
    first = glob.split("/", 1)[0]
    return _WILDCARD_BUCKET if "*" in first else first


@dataclass
class _Bucket:
    ids_by_glob: dict[str, set[str]] = field(default_factory=dict)
    # Rebuilt lazily after a change: RE2 sets cannot drop a pattern.
    compiled: re2.Set | None = None
    order: list[str] = field(default_factory=list)

    def match(self, repository: str) -> set[str]:
        if self.compiled is None:
            self.order = list(self.ids_by_glob)
            s = re2.Set.FullMatchSet()
            for g in self.order:
                s.Add(glob_to_regex(g))
            s.Compile()
            self.compiled = s
        hits = self.compiled.Match(repository) or []
        out: set[str] = set()
        for i in hits:
            out |= self.ids_by_glob[self.order[i]]
        return out


class SourceIndex:
    """Maps repositories to the ids of the policies whose source names or matches them."""

    def __init__(self) -> None:
        self._source_of: dict[str, str] = {}
        self._by_literal: dict[str, set[str]] = {}
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._source_of)

    def put(self, policy_id: str, source: str) -> None:
        """Add a policy, or move it when its source changed."""
        old = self._source_of.get(policy_id)
        if old == source:
            return
        if old is not None:
            self.remove(policy_id)
        self._source_of[policy_id] = source
        self._by_literal.setdefault(source, set()).add(policy_id)
        if is_glob(source):
            bucket = self._buckets.setdefault(_bucket_of(source), _Bucket())
            ids = bucket.ids_by_glob.setdefault(source, set())
            if not ids:
                bucket.compiled = None
            ids.add(policy_id)

    def remove(self, policy_id: str) -> None:
        source = self._source_of.pop(policy_id, None)
        if source is None:
            return
        ids = self._by_literal[source]
        ids.discard(policy_id)
        if not ids:
            del self._by_literal[source]
        if is_glob(source):
            key = _bucket_of(source)
            bucket = self._buckets[key]
            gids = bucket.ids_by_glob[source]
            gids.discard(policy_id)
            if not gids:
                del bucket.ids_by_glob[source]
                bucket.compiled = None
                if not bucket.ids_by_glob:
                    del self._buckets[key]

    def match(self, repository: str) -> set[str]:
        """Ids of policies whose source equals `repository` or whose glob matches it.

        A `repository` that is itself a glob is compared literally only.
        """
        out = set(self._by_literal.get(repository, ()))
        if is_glob(repository):
            return out
        first = repository.split("/", 1)[0]
        for key in (first, _WILDCARD_BUCKET):
            bucket = self._buckets.get(key)
            if bucket is not None:
                out |= bucket.match(repository)
        return out


class EndpointIndex:
    """One SourceIndex per source endpoint: a policy applies to a push only on its own
    endpoint, whatever the repository is called elsewhere."""

    def __init__(self) -> None:
        self._endpoint_of: dict[str, str] = {}
        self._by_endpoint: dict[str, SourceIndex] = {}

    def __len__(self) -> int:
        return len(self._endpoint_of)

    def put(self, policy_id: str, endpoint: str, source: str) -> None:
        """Add a policy, or move it when its endpoint or source changed."""
        old = self._endpoint_of.get(policy_id)
        if old is not None and old != endpoint:
            self.remove(policy_id)
        self._endpoint_of[policy_id] = endpoint
        self._by_endpoint.setdefault(endpoint, SourceIndex()).put(policy_id, source)

    def remove(self, policy_id: str) -> None:
        endpoint = self._endpoint_of.pop(policy_id, None)
        if endpoint is None:
            return
        idx = self._by_endpoint[endpoint]
        idx.remove(policy_id)
        if not len(idx):
            del self._by_endpoint[endpoint]

    def match(self, endpoint: str, repository: str) -> set[str]:
        """Ids of the policies reading `endpoint` whose source names or matches `repository`."""
        idx = self._by_endpoint.get(endpoint)
        return idx.match(repository) if idx is not None else set()

    def match_any(self, repository: str) -> set[str]:
        """As `match`, on every endpoint."""
        out: set[str] = set()
        for idx in self._by_endpoint.values():
            out |= idx.match(repository)
        return out

    def on(self, endpoint: str) -> set[str]:
        """Ids of the policies reading `endpoint`."""
        return {i for i, e in self._endpoint_of.items() if e == endpoint}
