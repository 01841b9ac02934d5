"""Scheduled policies (pull mirroring): poll each source on its interval or cron, cheaply.

A poll lists the source's tags (all pages) and HEADs each one; only a tag that is new or
points at another digest than at the last poll is acted on (evaluated, copied). An unchanged
poll of N tags therefore costs the tag-list pages plus N HEADs: no manifest GET, no blob GET,
nothing that Docker Hub-style registries count against their pull limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter
from mirror.v1 import gateway_pb2, policy_pb2, policy_pb2_grpc

from gateway.deletions import Deleter
from gateway.dest_tags import LIST_FROM_TAGS, DestinationTags
from gateway.polls import PollRecord, PollStore
from gateway.runner import Push, Runner, SourceRefused, TransientError, is_metadata_tag
from gateway.runs import RunStore
from servicekit.logs import bind, context_id

log = logging.getLogger("gateway.scheduler")

Run = gateway_pb2.Run
COPIED = frozenset({Run.STATE_PENDING, Run.STATE_RUNNING, Run.STATE_SUCCEEDED})
FAILED = frozenset({Run.STATE_FAILED, Run.STATE_BLOCKED})
# Registry requests and decisions in flight at once within one repository of a poll (the
# endpoint's max_concurrency and requests_per_second still bound what reaches the registry).
POLL_CONCURRENCY = 8
# Repositories of one poll listed and HEADed at once, and tag decisions (each ending in a
# transfer started) in flight at once across the whole poll.
REPOS_READ_AT_ONCE = 4
DECISIONS_AT_ONCE = 32
# How long past its due time a poll may wait for the previous poll's copies (at least), and
# how often it looks whether they are done.
HOLD_AT_MOST_S = 60.0
HOLD_RECHECK_S = 0.25
# How often the scheduled policies are listed (new ones, changed schedules).
LIST_EVERY_S = 0.2
_VERSION = re.compile(r"^v?(\d+)(?:\.(\d+))?(?:\.(\d+))?(.*)$")


def is_scheduled(pol: policy_pb2.Policy) -> bool:
    return pol.HasField("trigger") and pol.trigger.WhichOneof("kind") == "schedule"


def schedule_key(pol: policy_pb2.Policy) -> str:
    """The schedule as text: a changed schedule is planned anew."""
    s = pol.trigger.schedule
    return f"{s.interval.ToJsonString()}|{s.cron}|{s.jitter.ToJsonString()}|{pol.time_zone}"


def next_poll(pol: policy_pb2.Policy, after: float, rng: random.Random | None = None) -> float:
    """When the poll after `after` is due: interval or cron, plus a random part of jitter."""
    jitter = (rng or random).uniform(0, pol.trigger.schedule.jitter.ToNanoseconds() / 1e9)
    return _next_slot(pol, after) + jitter


def _next_slot(pol: policy_pb2.Policy, after: float) -> float:
    s = pol.trigger.schedule
    if s.cron:
        tz = ZoneInfo(pol.time_zone) if pol.time_zone else UTC
        base = datetime.fromtimestamp(after, tz)
        return float(croniter(s.cron, base).get_next(float))
    return after + max(1.0, s.interval.ToNanoseconds() / 1e9)


def version_key(tag: str) -> tuple[Any, ...]:
    """Newest first ordering: semantic versions (v1.2.3, 1.25.3-alpine) above other names."""
    m = _VERSION.match(tag)
    if m is None:
        return (0, tag)
    major, minor, patch, rest = m.groups()
    # A release sorts above its pre-releases and suffixed variants of the same number.
    return (1, int(major), int(minor or 0), int(patch or 0), rest == "", rest)


class PollScheduler:
    """Runs each scheduled policy's polls, one at a time per policy, a few policies at once."""

    def __init__(
        self,
        policy: policy_pb2_grpc.PolicyServiceStub,
        resolver: Any,
        runner: Runner,
        runs: RunStore,
        polls: PollStore,
        repositories: Callable[[policy_pb2.Policy], Awaitable[list[str]]],
        deleter: Deleter | None = None,
        concurrency: int = 4,
    ) -> None:
        self.policy = policy
        self.resolver = resolver
        self.runner = runner
        self.runs = runs
        self.polls = polls
        self.db = polls.db
        self.repositories = repositories
        self.deleter = deleter
        self._slots = asyncio.Semaphore(concurrency)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._policies: list[policy_pb2.Policy] = []
        self._listed_at = 0.0
        # Policy -> when to look again whether its due poll may start (it waits for copies).
        self._holding: dict[str, float] = {}
        self._due: dict[tuple[str, str], float] = {}  # (policy, schedule) -> next poll

    async def run_forever(self, tick_s: float = 0.1) -> None:
        context_id.set("polls")
        # Due times planned while this replica held the duty; another may have planned since.
        self._due.clear()
        try:
            while True:
                try:
                    await self.tick()
                except Exception as exc:  # a failed listing is retried at the next tick
                    log.warning("cannot plan polls: %s", exc)
                await asyncio.sleep(tick_s)
        finally:
            for task in self._running.values():
                task.cancel()
            for task in list(self._running.values()):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def tick(self) -> None:
        """Start the polls that are due."""
        now = time.time()
        scheduled = await self._scheduled()
        live = {(pol.id, schedule_key(pol)) for pol in scheduled}
        for gone in self._due.keys() - live:  # deleted, disabled or rescheduled
            del self._due[gone]
        for pol in scheduled:
            key = schedule_key(pol)
            due = self._due.get((pol.id, key))
            if due is None:
                due = await self.db.run(self.polls.next_time, pol.id, key)
            if due is None:
                # First sight of this schedule: a pull mirror syncs what is there at once.
                due = now
                await self.db.run(self.polls.plan, pol.id, key, due)
            self._due[(pol.id, key)] = due
            if due <= now and pol.id not in self._running:
                if await self._held_back(pol, due, now):
                    continue
                planned = next_poll(pol, now)
                await self.db.run(self.polls.plan, pol.id, key, planned)
                self._due[(pol.id, key)] = planned
                self._running[pol.id] = asyncio.create_task(self._guarded(pol))

    async def _held_back(self, pol: policy_pb2.Policy, due: float, now: float) -> bool:
        """A due poll waits while copies its policy's previous poll started are still
        pending or running (reading the source again then would only find those same tags),
        but not past its next slot or a minute, whichever is later: a stuck copy never stops
        a mirror's polls."""
        if now < self._holding.get(pol.id, 0.0):
            return True  # looked a moment ago: still waiting
        last = await self.db.run(self.polls.last, pol.id)
        until = max(_next_slot(pol, due), due + HOLD_AT_MOST_S)
        if (
            last is None
            or not last.end_time
            or now >= until
            or not await self.db.run(self.runs.poll_copying, last.id)
        ):
            self._holding.pop(pol.id, None)
            return False
        if pol.id not in self._holding:
            log.info("policy %s: next poll waits for the copies of poll %s", pol.name, last.id)
        self._holding[pol.id] = now + HOLD_RECHECK_S
        return True

    async def _scheduled(self) -> list[policy_pb2.Policy]:
        # Only the scheduled policies, so listing them often stays cheap: a new pull mirror
        # starts its first poll within a tick or two of being saved.
        if time.monotonic() - self._listed_at > LIST_EVERY_S:
            out: list[policy_pb2.Policy] = []
            token = ""
            while True:
                resp = await self.policy.ListPolicies(
                    policy_pb2.ListPoliciesRequest(
                        page_size=1000, page_token=token, trigger="schedule"
                    ),
                    timeout=30,
                )
                out.extend(p for p in resp.policies if p.enabled and is_scheduled(p))
                token = resp.next_page_token
                if not token:
                    break
            self._policies, self._listed_at = out, time.monotonic()
        return self._policies

    async def _guarded(self, pol: policy_pb2.Policy) -> None:
        try:
            async with self._slots:
                await self.poll(pol)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("poll of policy %s failed", pol.name)
        finally:
            self._running.pop(pol.id, None)

    async def poll(self, pol: policy_pb2.Policy) -> PollRecord:
        """One poll of the policy's source; its record says what it saw and did."""
        rec = await self.db.run(self.polls.start, pol.id)
        bind(policy=pol.name, poll=rec.id)
        try:
            repos = await self.repositories(pol)
            # Repositories are read a few at a time, and their changed tags are decided on
            # under one budget for the whole poll: the next repository is listed while the
            # last one's tags are still being copied, instead of waiting for its slowest tag.
            reading = asyncio.Semaphore(REPOS_READ_AT_ONCE)
            deciding = asyncio.Semaphore(DECISIONS_AT_ONCE)
            listing = DestinationTags(self.resolver)
            try:
                await asyncio.gather(
                    *(self._poll_repo(pol, rec, r, reading, deciding, listing) for r in repos)
                )
            finally:
                listing.close()
            for repo in set(await self.db.run(self.polls.repositories, pol.id)) - set(repos):
                await self._poll_gone(pol, rec, repo, set())  # the repository itself is gone
        except Exception as exc:
            rec.message = f"poll failed: {exc}"[:500]
            log.warning("policy %s: %s", pol.name, rec.message)
        finally:
            await self.db.run(self.polls.finish, rec)
        log.info(
            "policy %s: poll %s: %d listed, %d changed, %d copied, %d failed",
            pol.name, rec.id, rec.tags_listed, rec.tags_changed, rec.tags_copied,
            rec.tags_failed,
            extra={k: getattr(rec, k) for k in ("tags_listed", "tags_changed", "tags_copied")},
        )
        return rec

    async def _poll_repo(
        self,
        pol: policy_pb2.Policy,
        rec: PollRecord,
        repo: str,
        reading: asyncio.Semaphore,
        deciding: asyncio.Semaphore,
        listing: DestinationTags,
    ) -> None:
        async with reading:
            tags, digests, seen = await self._read_repo(pol, rec, repo)
        ordered = sorted(tags, key=version_key, reverse=True)
        changed: list[tuple[str, tuple[str, bool] | None]] = []
        # Signatures, attestations, SBOMs and referrer indexes: never images.
        metadata: list[tuple[str, tuple[str, bool] | None]] = []
        matched = 0
        for tag in ordered:
            if not digests[tag]:
                continue  # deleted since the listing
            before = seen.get(tag)
            if before is not None and before[0] == digests[tag]:
                if not is_metadata_tag(tag):
                    matched += before[1]
            else:
                rec.tags_changed += 1
                (metadata if is_metadata_tag(tag) else changed).append((tag, before))
        dest = listing if len(changed) >= LIST_FROM_TAGS else None
        if pol.keep_newest:
            # Newest first, one at a time: only the first K matching tags are mirrored.
            for tag, before in changed:
                if matched >= pol.keep_newest:
                    rec.tags_skipped += 1  # older than the newest K matching tags
                    continue
                async with deciding:
                    matched += await self._decide(pol, rec, repo, tag, digests[tag], before, dest)
        else:

            async def one(tag: str, before: tuple[str, bool] | None) -> None:
                async with deciding:
                    await self._decide(pol, rec, repo, tag, digests[tag], before, dest)

            await asyncio.gather(*(one(t, b) for t, b in changed))
        # After the images: what arrived for an image this poll copies travels with that copy
        # (copy_referrers); what arrived for one mirrored before is carried to it, and feeds
        # the image's runs that wait for it.
        for tag, before in metadata:
            async with deciding:
                await self._decide(pol, rec, repo, tag, digests[tag], before, None)
        await self._poll_gone(pol, rec, repo, set(tags))

    async def _read_repo(
        self, pol: policy_pb2.Policy, rec: PollRecord, repo: str
    ) -> tuple[list[str], dict[str, str], dict[str, tuple[str, bool]]]:
        """The repository's tags, the digest each points at now ("" if gone since the
        listing), and what the last poll saw."""
        ep = pol.source.endpoint
        seen = await self.db.run(self.polls.seen, pol.id, repo)
        async with self.resolver.client_for(ep) as rc:
            tags = await _list_tags(rc, repo)
            rec.requests += 1
            rec.tags_listed += len(tags)
            ordered = sorted(tags, key=version_key, reverse=True)
            # HEADs in parallel, within the endpoint's own request limits.
            slots = asyncio.Semaphore(POLL_CONCURRENCY)

            async def head(tag: str) -> str:
                async with slots:
                    desc = await rc.head_manifest(repo, tag)
                rec.requests += 1
                return desc.digest if desc is not None else ""

            digests = dict(zip(ordered, await asyncio.gather(*map(head, ordered)), strict=True))
        return tags, digests, seen

    async def _decide(
        self,
        pol: policy_pb2.Policy,
        rec: PollRecord,
        repo: str,
        tag: str,
        digest: str,
        before: tuple[str, bool] | None,
        dest: DestinationTags | None = None,
    ) -> bool:
        """Act on one new or moved tag and count it; True when the rule matched it."""
        state = await self._act(pol, rec, repo, tag, digest, before, dest)
        if state is None or state in FAILED:
            rec.tags_failed += 1  # not remembered: the next poll tries again
            return False
        if state in COPIED:
            rec.tags_copied += 1
        else:
            rec.tags_skipped += 1
        hit = state != Run.STATE_NOT_MATCHED
        await self.db.run(self.polls.remember, pol.id, repo, tag, digest, hit)
        return hit

    async def _act(
        self,
        pol: policy_pb2.Policy,
        rec: PollRecord,
        repo: str,
        tag: str,
        digest: str,
        before: tuple[str, bool] | None,
        dest: DestinationTags | None = None,
    ) -> int | None:
        why = "new tag" if before is None else f"tag moved from {before[0]} to {digest}"
        push = Push(
            event_id=f"poll:{rec.id}:{repo}:{tag}",
            trigger=Run.TRIGGER_SCHEDULE,
            endpoint=pol.source.endpoint,
            repository=repo,
            tag=tag,
            digest=digest,
            evaluation_time=time.time(),
            cause=f"poll {rec.id}: {why}",
            poll_id=rec.id,
            previous_digest=before[0] if before else "",
            destination_tags=dest,
        )
        try:
            runs = await self.runner.act(
                push, only_policy=pol.id, kinds=frozenset(pol.required_facts)
            )
        except (TransientError, SourceRefused) as exc:
            # Counted failed in the poll's record and not remembered: the next poll tries again.
            log.info("policy %s: %s:%s not acted on yet: %s", pol.name, repo, tag, exc)
            return None
        return runs[0].state if runs else Run.STATE_NOT_MATCHED

    async def _poll_gone(
        self, pol: policy_pb2.Policy, rec: PollRecord, repo: str, listed: set[str]
    ) -> None:
        """Tags seen at the last poll and gone now: forgotten, and deleted if opted in."""
        for tag, (digest, _) in (await self.db.run(self.polls.seen, pol.id, repo)).items():
            if tag in listed:
                continue
            if self.deleter is not None:
                run = await self.deleter.source_deleted(
                    pol,
                    repo,
                    tag,
                    event_id=f"poll:{rec.id}:{repo}:{tag}:gone",
                    trigger=Run.TRIGGER_SCHEDULE,
                    cause=f"poll {rec.id}: {repo}:{tag} ({digest}) is gone at the source",
                    poll_id=rec.id,
                )
                if run is not None and run.state == Run.STATE_SUCCEEDED:
                    rec.tags_deleted += 1
            await self.db.run(self.polls.forget, pol.id, repo, tag)


async def _list_tags(rc: Any, repo: str) -> list[str]:
    from registry_client import errors as rc_errors

    try:
        return list(await rc.list_tags(repo))
    except rc_errors.NotFound:
        return []
