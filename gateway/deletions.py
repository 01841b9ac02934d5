"""Deletions, opt-in per policy: a source tag that is gone, or a mirrored tag that no longer
matches (prune), is deleted at the destination only if this policy wrote it there.

Each deletion (or dry-run deletion) is a run with `action` DELETE / DELETE_DRY_RUN, so it shows
in the policy's history and outbound events like a copy does.
"""

from __future__ import annotations

import logging
import time

import grpc
from mirror.v1 import gateway_pb2, policy_pb2, policy_pb2_grpc, transfer_pb2, transfer_pb2_grpc

from gateway.runner import RPC_TIMEOUT_S, Push, Runner
from gateway.runs import RunRecord, RunStore
from gateway.tracker import count_run
from registry_client import errors as rc_errors
from servicekit.retry import transient_rpc_error

log = logging.getLogger("gateway.deletions")

Run = gateway_pb2.Run
DELETING = frozenset({policy_pb2.DELETION_MODE_PROPAGATE, policy_pb2.DELETION_MODE_DRY_RUN})


class Deleter:
    """Deletes destination tags a policy wrote, through TransferService.DeleteTag."""

    def __init__(
        self,
        transfer: transfer_pb2_grpc.TransferServiceStub,
        policy: policy_pb2_grpc.PolicyServiceStub,
        runs: RunStore,
        runner: Runner,
    ) -> None:
        self.transfer = transfer
        self.policy = policy
        self.runs = runs
        self.runner = runner

    async def source_deleted(
        self,
        pol: policy_pb2.Policy,
        repo: str,
        tag: str,
        *,
        event_id: str,
        trigger: int,
        cause: str,
        poll_id: str = "",
    ) -> RunRecord | None:
        """The source tag is gone: delete what this policy wrote for it (if opted in)."""
        if pol.deletions not in DELETING:
            return None
        wrote = await self.runs.db.run(
            self.runs.last_copy, pol.id, pol.source.endpoint, repo, tag
        )
        if wrote is None:
            return None  # nothing of this policy's there: nothing to delete
        dry = pol.deletions == policy_pb2.DELETION_MODE_DRY_RUN
        return await self._delete(wrote, dry, event_id, trigger, cause, poll_id)

    async def prune(self, pol: policy_pb2.Policy, dry_run: bool) -> tuple[list[RunRecord], int]:
        """Delete (or list) destination tags this policy wrote that no longer match."""
        out: list[RunRecord] = []
        kept = 0
        nonce = f"{time.time():.6f}"
        for wrote in await self.runs.db.run(self.runs.copies_of, pol.id):
            why = await self._no_longer_matches(pol, wrote)
            if not why:
                kept += 1
                continue
            rec = await self._delete(
                wrote, dry_run, f"prune:{nonce}:{wrote.id}", Run.TRIGGER_APPLY, f"prune: {why}"
            )
            out.append(rec)
        return out, kept

    async def _no_longer_matches(self, pol: policy_pb2.Policy, wrote: RunRecord) -> str:
        """Why a mirrored tag should go ('' to keep it; unsure means keep)."""
        resolver = self.runner.gatherer.resolver
        if resolver is None:
            return ""
        try:
            async with resolver.client_for(wrote.src_endpoint) as rc:
                now = await rc.head_manifest(wrote.src_repository, wrote.src_tag)
        except rc_errors.NotFound:
            now = None
        except Exception:
            return ""  # cannot tell: keep
        if now is None:
            return f"{wrote.src_repository}:{wrote.src_tag} is gone at the source"
        push = Push(
            event_id="", trigger=Run.TRIGGER_APPLY, endpoint=wrote.src_endpoint,
            repository=wrote.src_repository, tag=wrote.src_tag, digest=wrote.src_digest,
            evaluation_time=time.time(),
        )
        result = await self.runner.evaluate_only(push, pol.id)
        if result is None or result.blocked or result.matched:
            return ""
        return f"{wrote.src_repository}:{wrote.src_tag} no longer matches the rule"

    async def _delete(
        self,
        wrote: RunRecord,
        dry_run: bool,
        event_id: str,
        trigger: int,
        cause: str,
        poll_id: str = "",
    ) -> RunRecord:
        where = f"{wrote.dst_repository}:{wrote.dst_tag} on endpoint {wrote.dst_endpoint}"
        rec = RunRecord(
            id="",
            policy_id=wrote.policy_id,
            policy_name=wrote.policy_name,
            event_id=event_id,
            trigger=trigger,
            src_endpoint=wrote.src_endpoint,
            src_repository=wrote.src_repository,
            src_tag=wrote.src_tag,
            src_digest=wrote.src_digest,
            dst_endpoint=wrote.dst_endpoint,
            dst_repository=wrote.dst_repository,
            dst_tag=wrote.dst_tag,
            state=Run.STATE_PENDING,
            action=Run.ACTION_DELETE_DRY_RUN if dry_run else Run.ACTION_DELETE,
            cause=cause,
            poll_id=poll_id,
        )
        if dry_run:
            rec.state, rec.message = Run.STATE_SUCCEEDED, f"dry run: would delete {where}"
        else:
            rec.state, rec.message = await self._call_delete(wrote, where)
        stored = await self.runs.db.run(self.runs.upsert_started, rec)
        if stored is rec:
            count_run(stored)
            await self.runner.tracker.on_final(stored)
        log.info("policy %s: %s", wrote.policy_name, stored.message)
        return stored

    async def _call_delete(self, wrote: RunRecord, where: str) -> tuple[int, str]:
        try:
            resp = await self.transfer.DeleteTag(
                transfer_pb2.DeleteTagRequest(
                    endpoint=wrote.dst_endpoint,
                    repository=wrote.dst_repository,
                    tag=wrote.dst_tag,
                    digest=wrote.src_digest,
                ),
                timeout=RPC_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
                return Run.STATE_SKIPPED, f"not deleted: {err.details()}"
            state = Run.STATE_FAILED
            if transient_rpc_error(err):
                return state, f"cannot delete {where} now: {err.code().name}: {err.details()}"
            return state, f"cannot delete {where}: {err.code().name}: {err.details()}"
        if not resp.deleted:
            return Run.STATE_SKIPPED, f"{where} was already gone"
        return Run.STATE_SUCCEEDED, f"deleted {where} ({wrote.src_digest})"
