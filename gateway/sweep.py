"""ApplyPolicy (DTR's "Save & Apply") and Reconcile: act on tags already in source registries."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc
from mirror.v1 import gateway_pb2, policy_pb2, policy_pb2_grpc

from gateway.catalog import list_repositories
from gateway.endpoints import EndpointDirectory
from gateway.facts import TRANSIENT_CODES, EndpointResolver
from gateway.inbox import Inbox
from gateway.runner import Push, Runner, TransientError
from gateway.runs import RunRecord, RunStore
from servicekit.errors import ApiError, failed_precondition, invalid_argument, unavailable
from servicekit.logs import context_id

log = logging.getLogger("gateway.sweep")

Run = gateway_pb2.Run


@dataclass
class SweepResult:
    tags_checked: int = 0
    tags_evaluated: int = 0
    tags_matched: int = 0
    runs: list[RunRecord] = field(default_factory=list)


def is_glob(source: str) -> bool:
    return any(ch in source for ch in "*?[")


class Sweeper:
    """Lists source tags through registry clients and feeds them to the runner."""

    def __init__(
        self,
        policy: policy_pb2_grpc.PolicyServiceStub,
        directory: EndpointDirectory,
        resolver: EndpointResolver | None,
        runner: Runner,
        runs: RunStore,
        inbox: Inbox,
    ) -> None:
        self.policy = policy
        self.directory = directory
        self.resolver = resolver
        self.runner = runner
        self.runs = runs
        self.inbox = inbox
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
        nonce = uuid.uuid4().hex[:12]
        return await self._sweep(pol, Run.TRIGGER_APPLY, f"apply:{nonce}")

    async def reconcile(self, policy_id: str = "") -> SweepResult:
        """Act on source tags (or tag -> digest changes) that no run covers."""
        async with self._lock:
            if policy_id:
                pol = await self.policy.GetPolicy(
                    policy_pb2.GetPolicyRequest(id=policy_id), timeout=30
                )
                policies = [pol] if pol.enabled else []
            else:
                policies = [p for p in await self._all_policies() if p.enabled]
            total = SweepResult()
            for pol in policies:
                r = await self._sweep(pol, Run.TRIGGER_RECONCILE, "reconcile")
                total.tags_checked += r.tags_checked
                total.tags_evaluated += r.tags_evaluated
                total.tags_matched += r.tags_matched
                total.runs.extend(r.runs)
            return total

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

    async def _sweep(self, pol: policy_pb2.Policy, trigger: int, prefix: str) -> SweepResult:
        if self.resolver is None:
            raise failed_precondition(
                "the gateway has no registry access (start it with the transfer service's "
                "endpoint store) and cannot list source tags",
                reason="NO_REGISTRY_ACCESS",
            )
        result = SweepResult()
        try:
            endpoints = await self.directory.all(max_age_s=0.5)
        except grpc.aio.AioRpcError as err:
            raise unavailable(f"cannot list endpoints: {err.details()}") from err
        for ep in endpoints:
            for repo in await self._repositories(ep.name, pol):
                if ep.name == pol.target.endpoint and repo == pol.target.repository:
                    continue  # the policy's own destination is never a source
                await self._sweep_repo(pol, trigger, prefix, ep.name, repo, result)
        return result

    async def _repositories(self, endpoint: str, pol: policy_pb2.Policy) -> list[str]:
        """The source repositories of `pol` in one registry (catalog + the policy service's
        own glob matching, so both sides agree on what a glob means)."""
        if not is_glob(pol.source_repository):
            return [pol.source_repository]
        assert self.resolver is not None
        async with self.resolver.client_for(endpoint) as rc:
            try:
                names = await list_repositories(rc)
            except Exception as exc:
                # A registry without (or denying) the catalog holds nothing we can find.
                log.warning("catalog of %s unavailable: %s", endpoint, exc)
                return []
        out = []
        for name in names:
            resp = await self.policy.ListPolicies(
                policy_pb2.ListPoliciesRequest(source_repository=name, page_size=1000),
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
        endpoint: str,
        repo: str,
        result: SweepResult,
    ) -> None:
        assert self.resolver is not None
        async with self.resolver.client_for(endpoint) as rc:
            try:
                tags = await rc.list_tags(repo)
            except Exception as exc:
                if _is_not_found(exc):
                    return  # this registry does not hold the repository
                raise unavailable(f"cannot list tags of {endpoint}/{repo}: {exc}") from exc
            for tag in sorted(tags):
                result.tags_checked += 1
                digest = await self._digest(rc, repo, tag)
                if digest is None:
                    continue
                if self._handled(pol.id, trigger, endpoint, repo, tag, digest):
                    continue
                result.tags_evaluated += 1
                failed = sum(
                    1
                    for r in self.runs.covering(pol.id, endpoint, repo, tag, digest)
                    if r.state == Run.STATE_FAILED
                )
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
                    runs = await self.runner.act(push, only_policy=pol.id)
                except TransientError as exc:
                    raise unavailable(str(exc)) from exc
                for r in runs:
                    if r.state != Run.STATE_NOT_MATCHED:
                        result.tags_matched += 1
                    result.runs.append(r)

    def _handled(
        self, policy_id: str, trigger: int, endpoint: str, repo: str, tag: str, digest: str
    ) -> bool:
        """Reconcile skips what a run covers or a pending event is about to act on."""
        if trigger != Run.TRIGGER_RECONCILE:
            return False
        if self.inbox.has_pending(repo, tag):
            return True
        runs = self.runs.covering(policy_id, endpoint, repo, tag, digest)
        return any(r.state != Run.STATE_FAILED for r in runs)

    async def _digest(self, rc: Any, repo: str, tag: str) -> str | None:
        try:
            d = await rc.head_manifest(repo, tag)
        except Exception as exc:
            if _is_not_found(exc):
                return None  # deleted between list and head
            raise unavailable(f"cannot read {repo}:{tag}: {exc}") from exc
        return d.digest if d is not None else None

    async def run_periodically(self, interval_s: float) -> None:
        """Reconcile every policy every `interval_s` seconds (errors are logged, not fatal)."""
        context_id.set("reconcile")
        while True:
            await asyncio.sleep(interval_s)
            try:
                r = await self.reconcile()
                if r.runs:
                    log.info("reconcile: %d tag(s) acted on", len(r.runs))
            except grpc.aio.AioRpcError as err:
                level = logging.INFO if err.code() in TRANSIENT_CODES else logging.WARNING
                log.log(level, "reconcile failed: %s %s", err.code().name, err.details())
            except ApiError as err:
                log.warning("reconcile failed: %s", err.message)
            except Exception:
                log.exception("reconcile failed")


def _is_not_found(exc: Exception) -> bool:
    try:
        from registry_client import errors as rc_errors
    except ImportError:  # pragma: no cover - registry_client is part of the project
        return False
    return isinstance(exc, rc_errors.NotFound)
