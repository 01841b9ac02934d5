"""Checks over the graph of policies, made when a policy is saved: self-loops, cycles that
could create tags forever, and two sources mapped onto one destination.

Policy A feeds policy B when A's target endpoint is B's source endpoint and some repository A
can write to may be read by B (patterns from `mapping`, overlap over-approximated). A closed
walk A -> ... -> A converges only when every policy on it keeps the tag (`%n`): then the
second copy finds the same digest and stops; any other template makes a new tag each round.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from policy_service import mapping
from policy_service.validate import is_glob

KEEP_TAG = "%n"


@dataclass(frozen=True)
class Route:
    """What the graph checks need to know about one policy."""

    id: str
    name: str
    source_endpoint: str
    source: str
    target_endpoint: str
    target: str
    tag_template: str
    enabled: bool
    source_pattern: str = field(init=False)
    dest_pattern: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "source_pattern", mapping.source_pattern(self.source))
        object.__setattr__(
            self, "dest_pattern", mapping.destination_pattern(self.source, self.target)
        )

    def describe(self) -> str:
        return (
            f"policy {self.name} ({self.source_endpoint}/{self.source} -> "
            f"{self.target_endpoint}/{self.target})"
        )

    def feeds(self, other: Route) -> bool:
        return self.target_endpoint == other.source_endpoint and mapping.overlap(
            self.dest_pattern, other.source_pattern
        )


def self_loop(r: Route) -> str | None:
    """Why `r` could write into its own source, or None."""
    if not r.feeds(r):
        return None
    if mapping.is_literal(r.dest_pattern) and not is_glob(r.source):
        how = "its target is its source"
    else:
        how = f"the source {r.source!r} can match repositories the target {r.target!r} writes"
    return (
        f"{r.describe()} would copy into its own source ({how}): every copy would trigger "
        "it again"
    )


def cycle(r: Route, others: Iterable[Route]) -> list[Route] | None:
    """A closed walk through `r` on which some policy changes the tag, or None.

    `others` are the other enabled policies (not `r` itself, even in an older version).
    """
    nodes: list[Route] = [r, *(o for o in others if o.id != r.id or not r.id)]
    fwd = _walk(nodes, forward=True)
    if 0 not in fwd:
        return None
    back = _walk(nodes, forward=False)
    on_cycle = [i for i in fwd if i in back]
    changer = next((i for i in on_cycle if nodes[i].tag_template != KEEP_TAG), None)
    if changer is None:
        return None
    # r -> ... -> changer (forward parents), then changer -> ... -> r (backward parents).
    head = _path(fwd, changer)[:-1] if changer else [0]
    tail = _path(back, changer)[::-1] if changer else _path(fwd, 0)[1:]
    return [nodes[i] for i in (head + tail)[:-1]]  # the walk from r, without r again


def _walk(nodes: Sequence[Route], forward: bool) -> dict[int, int]:
    """Breadth-first from node 0: {node: the node it was reached from}, for nodes one or
    more steps away (0 appears only if it is on a cycle)."""
    parent: dict[int, int] = {}
    todo = deque([0])
    while todo:
        x = todo.popleft()
        for y, node in enumerate(nodes):
            if y in parent:
                continue
            if nodes[x].feeds(node) if forward else node.feeds(nodes[x]):
                parent[y] = x
                if y != 0:
                    todo.append(y)
    return parent


def _path(parent: dict[int, int], end: int) -> list[int]:
    """Node 0 -> ... -> end along `parent` pointers."""
    out = [end]
    x = parent[end]
    while x != 0:
        out.append(x)
        x = parent[x]
    out.append(0)
    return out[::-1]


def describe_cycle(path: list[Route]) -> str:
    return " -> ".join(p.describe() for p in path) + f" -> policy {path[0].name}"


def collision(r: Route, others: Iterable[Route]) -> Route | None:
    """Another policy that may write a different source repository into one of `r`'s
    destinations, or None."""
    for o in others:
        if o.id == r.id and r.id:
            continue
        if o.target_endpoint != r.target_endpoint:
            continue
        if not mapping.overlap(r.dest_pattern, o.dest_pattern):
            continue
        if _same_mapping(r, o):
            continue
        if _exact_pair_agrees(r, o) or _exact_pair_agrees(o, r):
            continue
        return o
    return None


def _same_mapping(a: Route, b: Route) -> bool:
    """Both policies map a source repository to the same destination, and a destination back
    to one source (so a shared destination means a shared source)."""
    if a.source_endpoint != b.source_endpoint or a.target != b.target:
        return False
    used = mapping.placeholders(a.target)
    if not used:
        return not is_glob(a.source) and a.source == b.source
    return "path" not in used or mapping.literal_prefix(a.source) == mapping.literal_prefix(
        b.source
    )


def _exact_pair_agrees(x: Route, y: Route) -> bool:
    """`x` reads one exact repository; whatever `y` writes into x's destination comes from
    that same repository on the same endpoint (or `y` writes nothing there)."""
    if is_glob(x.source) or not mapping.is_literal(x.dest_pattern):
        return False
    dest = x.dest_pattern
    if not is_glob(y.source):
        if not mapping.placeholders(y.target) and y.target != dest:
            return True
        written = mapping.render_for(y.source, y.target, y.source)
        return written != dest or (y.source_endpoint, y.source) == (x.source_endpoint, x.source)
    if not mapping.placeholders(y.target):
        return False  # a glob onto one repository: always a clash
    pre = mapping.preimage(y.source, y.target, dest)
    if pre is None:
        return False
    return pre == "" or (y.source_endpoint, pre) == (x.source_endpoint, x.source)
