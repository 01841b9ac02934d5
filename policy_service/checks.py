"""The save checks that look at other policies (loops, cycles, collisions) and at the
transfer service (the source endpoint exists, the target accepts pushes), shared by
CreatePolicy (validate_only too), UpdatePolicy and the start-up source migration."""

from __future__ import annotations

from collections.abc import Iterable

from policy_service import mapping, topology
from policy_service.push_check import PushChecker
from policy_service.store import PolicyRecord
from policy_service.topology import Route
from servicekit import errors


def route_of(rec: PolicyRecord) -> Route:
    return Route(
        id=rec.id, name=rec.name, source_endpoint=rec.source_endpoint,
        source=rec.source_repository, target_endpoint=rec.target_endpoint,
        target=rec.target_repository, tag_template=rec.tag_template, enabled=rec.enabled,
    )


def check_graph(rec: PolicyRecord, others: Iterable[PolicyRecord]) -> None:
    """Raise when `rec` (saved as it is) would loop onto itself, close a cycle that keeps
    making tags, or share a destination with another policy's different source.

    `others` are every other stored policy that compiles (the one being updated included:
    it is skipped by id).
    """
    r = route_of(rec)
    loop = topology.self_loop(r)
    if loop:
        raise errors.invalid_argument(
            f"the policy loops onto itself: {loop}",
            [("policy.target", loop)],
            reason="POLICY_SELF_LOOP",
        )
    routes = [route_of(o) for o in others if o.id != rec.id or not rec.id]
    clash = topology.collision(r, routes)
    if clash is not None:
        text = (
            f"{r.describe()} and {clash.describe()} could write different source "
            f"repositories into the same destination repository on endpoint "
            f"{r.target_endpoint!r}; give one of them another target (e.g. with {{path}})"
        )
        raise errors.failed_precondition(
            f"the target collides with policy {clash.name!r}: {text}",
            [("TARGET_COLLISION", f"policies/{clash.id}", text)],
            reason="TARGET_COLLISION",
        )
    if not rec.enabled:
        return  # checked again when it is enabled
    walk = topology.cycle(r, [o for o in routes if o.enabled])
    if walk is not None:
        text = topology.describe_cycle(walk)
        changers = sorted({w.name for w in walk if w.tag_template != topology.KEEP_TAG})
        raise errors.failed_precondition(
            f"the policy closes a cycle that would make new tags forever: {text} (policy "
            f"{', '.join(changers)} renders a tag other than %n; only cycles of %n mirrors "
            "converge)",
            [("POLICY_CYCLE", f"policies/{rec.id or rec.name}", text)],
            reason="POLICY_CYCLE",
        )


async def check_remote(
    checker: PushChecker | None, rec: PolicyRecord, source: bool = True, target: bool = True
) -> None:
    """Ask the transfer service: the source endpoint exists and the target is pushable (for a
    mapped target, as rendered for an example source repository)."""
    if checker is None:
        return
    if source:
        await checker.require_endpoint(rec.source_endpoint)
    if target:
        await checker.check(
            rec.target_endpoint, mapping.sample_target(rec.source_repository, rec.target_repository)
        )
