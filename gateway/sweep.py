"""ApplyPolicy (DTR's "Save & Apply") and Reconcile: act on tags already in source registries."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from mirror.v1 import gateway_pb2, policy_pb2, policy_pb2_grpc

from gateway.baselines import BaselineStore
from gateway.catalog import list_repositories
from gateway.deletions import DELETING, Deleter
from gateway.endpoints import EndpointDirectory
from gateway.inbox import Inbox
from gateway.runner import RETRIED_BY_RECONCILE, Push, Runner, SourceRefused, TransientError
from gateway.runs import RunRecord, RunStore
from registry_client.resolver import EndpointResolver
from servicekit.errors import ApiError, failed_precondition, invalid_argument
from servicekit.logs import context_id
from servicekit.retry import transient_rpc_error

log = logging.getLogger("gateway.sweep")

Run = gateway_pb2.Run


@dataclass
class SweepResult:
    tags_checked: int = 0
    tags_evaluated: int = 0
    tags_matched: int = 0
    runs: list[RunRecord] = field(default_factory=list)
    errors: list[gateway_pb2.SweepError] = field(default_factory=list)
    # repository -> the tags listed in it (only repositories whose listing succeeded).
    listed: dict[str, set[str]] = field(default_factory=dict)

    def add(self, other: SweepResult) -> None:
        self.tags_checked += other.tags_checked
        self.tags_evaluated += other.tags_evaluated
        self.tags_matched += other.tags_matched
        self.runs.extend(other.runs)
        self.errors.extend(other.errors)


class SweepFailed(Exception):
    """One repository or endpoint could not be read; the sweep records it and carries on."""


def is_glob(source: str) -> bool:
    return any(ch in source for ch in "*?[")


def active_since(pol: policy_pb2.Policy) -> float:
    return pol.active_since.ToNanoseconds() / 1e9 if pol.HasField("active_since") else 0.0


class Sweeper:
    """Lists a policy's source tags (on its source endpoint only) and feeds them to the runner."""

    def __init__(
        self,
        policy: policy_pb2_grpc.PolicyServiceStub,
        directory: EndpointDirectory,
        resolver: EndpointResolver | None,
        runner: Runner,
        runs: RunStore,
        inbox: Inbox,
        baselines: BaselineStore,
        deleter: Deleter | None = None,
    ) -> None:
        self.policy = policy
        self.directory = directory
        self.resolver = resolver
        self.runner = runner
        self.runs = runs
        self.db = runs.db
        self.inbox = inbox
        self.baselines = baselines
        self.deleter = deleter
        self._lock = asyncio.Lock()

    async def apply(self, policy_id: str) -> SweepResult:
        """Evaluate every tag of the policy's source repository now; mirror the matches."""
        if not policy_id:
            raise invalid_argument("policy_id is required", [("policy_id", "empty")])
        pol = await self.policy.GetPolicy(policy_pb2.GetPolicyRequest(id=policy_id), timeout=30)
        if not pol.enabled:
            raise failed_precondition(
                f"policy {policy_id} is disabled; enable it before applying it",
                [("STATE", f"policies/{policy_id}", "policy is disabled")],
                reason="POLICY_DISABLED",
            )
        self._require_access()
        nonce = uuid.uuid4().hex[:12]
        return await self._sweep(pol, Run.TRIGGER_APPLY, f"apply:{nonce}")

    async def reconcile(self, policy_id: str = "") -> SweepResult:
        """Act on source tags (or tag -> digest changes) since each policy became active that
        no run covers, and repair mirrored tags whose destination drifted."""
        self._require_access()
        async with self._lock:
            if policy_id:
                pol = await self.policy.GetPolicy(
                    policy_pb2.GetPolicyRequest(id=policy_id), timeout=30
                )
                policies = [pol] if pol.enabled else []
            else:
                policies = [p for p in await self._all_policies() if p.enabled]
            # Scheduled policies poll their source themselves; manual ones act only on Apply.
            policies = [p for p in policies if _push_triggered(p)]
            total = SweepResult()
            for pol in policies:
                errors = len(total.errors)
                await self._ensure_baseline(pol, total)
                if len(total.errors) > errors:
                    continue  # no baseline: sweeping could backfill what predates the policy
                total.add(await self._sweep(pol, Run.TRIGGER_RECONCILE, "reconcile"))
            return total

    async def take_baselines(self) -> int:
        """Record the baseline of every active policy that has none yet; returns how many."""
        if self.resolver is None:
            return 0
        taken = 0
        async with self._lock:
            for pol in [p for p in await self._all_policies() if _push_triggered(p)]:
                fresh = pol.enabled and not await self.db.run(
                    self.baselines.taken, pol.id, active_since(pol)
                )
                if fresh and not await self._ensure_baseline(pol, SweepResult()):
                    taken += 1
        return taken

    async def _ensure_baseline(self, pol: policy_pb2.Policy, result: SweepResult) -> bool:
        """True when the policy already had a baseline; else take it now (False)."""
        since = active_since(pol)
        if await self.db.run(self.baselines.taken, pol.id, since):
            return True
        seen: list[tuple[str, str, str]] = []
        ep = pol.source.endpoint
        try:
            for repo in await self.repositories(pol):
                assert self.resolver is not None
                async with self.resolver.client_for(ep) as rc:
                    for tag in await self._tags(rc, ep, repo):
                        digest = await self._digest(rc, ep, repo, tag)
                        if digest:
                            seen.append((repo, tag, digest))
        except SweepFailed as exc:
            result.errors.append(_error(pol, ep, "", f"baseline not taken yet: {exc}"))
            return False
        await self.db.run(self.baselines.record, pol.id, since, seen)
        await self.db.run(self.baselines.forget_older, pol.id, since)
        log.info("policy %s: baseline of %d source tag(s) recorded", pol.name, len(seen))
        return False

    async def _all_policies(self) -> list[policy_pb2.Policy]:
        out: list[policy_pb2.Policy] = []
        token = ""
        while True:
            resp = await self.policy.ListPolicies(
                policy_pb2.ListPoliciesRequest(page_size=1000, page_token=token), timeout=30
            )
            out.extend(resp.policies)
            token = resp.next_page_token
            if not token:
                return out

    def _require_access(self) -> None:
        if self.resolver is None:
            raise failed_precondition(
                "the gateway has no registry access (start it with the transfer service's "
                "endpoint store) and cannot list source tags",
                reason="NO_REGISTRY_ACCESS",
            )

    async def _sweep(self, pol: policy_pb2.Policy, trigger: int, prefix: str) -> SweepResult:
        """Only the policy's source endpoint is read; an unreadable repository is reported
        in `errors` and the sweep carries on with the others."""
        result = SweepResult()
        ep = pol.source.endpoint
        try:
            repos = await self.repositories(pol)
        except SweepFailed as exc:
            result.errors.append(_error(pol, ep, "", str(exc)))
            return result
        for repo in repos:
            if ep == pol.target.endpoint and repo == pol.target.repository:
                continue  # the policy's own destination is never a source
            try:
                await self._sweep_repo(pol, trigger, prefix, repo, result)
            except SweepFailed as exc:
                result.errors.append(_error(pol, ep, repo, str(exc)))
        if trigger == Run.TRIGGER_RECONCILE:
            await self._deleted_at_source(pol, result)
        return result

    async def _deleted_at_source(self, pol: policy_pb2.Policy, result: SweepResult) -> None:
        """Mirrored tags whose source tag is gone (a lost delete event): deleted if opted in."""
        if self.deleter is None or pol.deletions not in DELETING:
            return
        for wrote in await self.db.run(self.runs.copies_of, pol.id):
            tags = result.listed.get(wrote.src_repository)
            if tags is None or wrote.src_tag in tags:
                continue  # not listed (unreadable or another repository), or still there
            run = await self.deleter.source_deleted(
                pol,
                wrote.src_repository,
                wrote.src_tag,
                event_id=f"reconcile:deleted:{wrote.id}",
                trigger=Run.TRIGGER_RECONCILE,
                cause=f"{wrote.src_repository}:{wrote.src_tag} is gone at the source",
            )
            if run is not None:
                result.runs.append(run)

    async def repositories(self, pol: policy_pb2.Policy) -> list[str]:
        """The source repositories of `pol` on its endpoint (catalog + the policy service's
        own glob matching, so both sides agree on what a glob means)."""
        ep = pol.source.endpoint
        if not is_glob(pol.source.repository):
            return [pol.source.repository]
        assert self.resolver is not None
        try:
            async with self.resolver.client_for(ep) as rc:
                names = await list_repositories(rc)
        except Exception as exc:
            raise SweepFailed(f"cannot list the repositories of endpoint {ep}: {exc}") from exc
        out = []
        for name in names:
            resp = await self.policy.ListPolicies(
                policy_pb2.ListPoliciesRequest(
                    source_endpoint=ep, source_repository=name, page_size=1000
                ),
                timeout=30,
            )
            if any(p.id == pol.id for p in resp.policies):
                out.append(name)
        return out

    async def _sweep_repo(
        self,
        pol: policy_pb2.Policy,
        trigger: int,
        prefix: str,
        repo: str,
        result: SweepResult,
    ) -> None:
        assert self.resolver is not None
        endpoint = pol.source.endpoint
        since = active_since(pol)
        async with self.resolver.client_for(endpoint) as rc:
            listed = await self._tags(rc, endpoint, repo)
            result.listed[repo] = set(listed)
            for tag in sorted(listed):
                result.tags_checked += 1
                digest = await self._digest(rc, endpoint, repo, tag)
                if not digest:
                    continue
                covering = await self.db.run(
                    self.runs.covering, pol.id, endpoint, repo, tag, digest
                )
                if trigger == Run.TRIGGER_RECONCILE:
                    # There before the policy and never acted on since: only Apply mirrors
                    # it. (A run means an event came after Save: then it is Reconcile's.)
                    if not covering and await self.db.run(
                        self.baselines.contains, pol.id, since, repo, tag, digest
                    ):
                        continue
                    if await self._handled(pol, repo, tag, covering, result):
                        continue
                result.tags_evaluated += 1
                failed = sum(1 for r in covering if r.state in RETRIED_BY_RECONCILE)
                push = Push(
                    event_id=f"{prefix}:{endpoint}/{repo}:{tag}@{digest}#{failed}",
                    trigger=trigger,
                    endpoint=endpoint,
                    repository=repo,
                    tag=tag,
                    digest=digest,
                    evaluation_time=time.time(),
                )
                try:
                    runs = await self.runner.act(
                        push, only_policy=pol.id, kinds=frozenset(pol.required_facts)
                    )
                except (TransientError, SourceRefused) as exc:
                    raise SweepFailed(str(exc)) from exc
                for r in runs:
                    if r.state != Run.STATE_NOT_MATCHED:
                        result.tags_matched += 1
                    result.runs.append(r)

    async def _handled(
        self,
        pol: policy_pb2.Policy,
        repo: str,
        tag: str,
        covering: list[RunRecord],
        result: SweepResult,
    ) -> bool:
        """Reconcile skips what a pending event is about to act on and what a run covers
        (`covering`: the policy's runs of this tag at this digest); a covered tag whose
        destination no longer holds the digest is repaired."""
        if await self.db.run(self.inbox.has_pending, repo, tag):
            return True
        live = [r for r in covering if r.state not in RETRIED_BY_RECONCILE]
        if not live:
            return False
        done = [r for r in live if r.state == Run.STATE_SUCCEEDED and r.dst_tag]
        if done and live[-1] is done[-1]:
            last = done[-1]
            held = await self.runner._destination_digest(
                last.dst_endpoint, last.dst_repository, last.dst_tag
            )
            if held != last.src_digest and pol.overwrite != policy_pb2.OVERWRITE_NEVER:
                rec = await self.runner.repair(last, held, f"repair:{last.id}:{held or 'none'}")
                result.runs.append(rec)
                result.tags_matched += 1
        return True

    async def _tags(self, rc: Any, endpoint: str, repo: str) -> list[str]:
        try:
            return list(await rc.list_tags(repo))
        except Exception as exc:
            if _is_not_found(exc):
                return []  # this registry does not hold the repository (yet)
            raise SweepFailed(f"cannot list tags of {endpoint}/{repo}: {exc}") from exc

    async def _digest(self, rc: Any, endpoint: str, repo: str, tag: str) -> str | None:
        try:
            d = await rc.head_manifest(repo, tag)
        except Exception as exc:
            if _is_not_found(exc):
                return None  # deleted between list and head
            raise SweepFailed(f"cannot read {endpoint}/{repo}:{tag}: {exc}") from exc
        return d.digest if d is not None else None

    async def run_periodically(self, interval_s: float) -> None:
        """Reconcile every policy every `interval_s` seconds (errors are logged, not fatal)."""
        await _every(interval_s, "reconcile", self._reconcile_logged)

    async def watch_policies(self, interval_s: float) -> None:
        """Take the baseline of newly active policies soon after they are saved."""
        await _every(interval_s, "baselines", self.take_baselines)

    async def _reconcile_logged(self) -> None:
        r = await self.reconcile()
        if r.runs:
            log.info("reconcile: %d tag(s) acted on", len(r.runs))
        for e in r.errors:
            log.warning("reconcile: %s/%s: %s", e.endpoint, e.repository, e.message)


async def _every(interval_s: float, name: str, job: Callable[[], Awaitable[object]]) -> None:
    context_id.set(name)
    while True:
        await asyncio.sleep(interval_s)
        try:
            await job()
        except grpc.aio.AioRpcError as err:
            level = logging.INFO if transient_rpc_error(err) else logging.WARNING
            log.log(level, "%s failed: %s %s", name, err.code().name, err.details())
        except ApiError as err:
            log.warning("%s failed: %s", name, err.message)
        except Exception:
            log.exception("%s failed", name)


def _push_triggered(pol: policy_pb2.Policy) -> bool:
    return not pol.HasField("trigger") or pol.trigger.WhichOneof("kind") in (None, "push")


def _error(pol: policy_pb2.Policy, endpoint: str, repo: str, msg: str) -> gateway_pb2.SweepError:
    return gateway_pb2.SweepError(
        endpoint=endpoint, repository=repo, policy_id=pol.id, message=msg[:500]
    )


def _is_not_found(exc: Exception) -> bool:
    try:
        from registry_client import errors as rc_errors
    except ImportError:  # pragma: no cover - registry_client is part of the project
        return False
    return isinstance(exc, rc_errors.NotFound)
