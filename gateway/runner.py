"""Act on one pushed image: facts -> Evaluate -> StartTransfer per matching policy -> runs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from mirror.v1 import (
    common_pb2,
    gateway_pb2,
    policy_pb2,
    policy_pb2_grpc,
    transfer_pb2,
    transfer_pb2_grpc,
)

from gateway.dest_tags import DestinationTags
from gateway.facts import Attachment, FactGatherer, Gathered, ImageRef
from gateway.runs import Hop, RunRecord, RunStore
from gateway.tracker import TransferTracker, count_run, run_state_name
from registry_client.errors import NotFound
from registry_client.referrers import parse_index
from servicekit.retry import Backoff, is_retryable, transient_rpc_error
from transfer_service.engine.referrers import KINDS as COPY_KINDS
from transfer_service.engine.referrers import TAG_SUFFIXES, kind_of, wanted

log = logging.getLogger("gateway.runner")

Run = gateway_pb2.Run
RPC_TIMEOUT_S = 30.0
SWEEP_TRIGGERS = frozenset({Run.TRIGGER_APPLY, Run.TRIGGER_RECONCILE})
ACTIVE_OR_DONE = frozenset({Run.STATE_PENDING, Run.STATE_RUNNING, Run.STATE_SUCCEEDED})
# Reconcile tries these again (nothing was copied and things may have changed since).
RETRIED_BY_RECONCILE = frozenset({Run.STATE_FAILED, Run.STATE_BLOCKED})
PUSH_TRIGGERS = frozenset({Run.TRIGGER_EVENT, Run.TRIGGER_NOTIFY})
# Where a metadata tag is an arrival: a push, or a poll that finds it new.
ARRIVAL_TRIGGERS = PUSH_TRIGGERS | {Run.TRIGGER_SCHEDULE}
DEFAULT_MAX_HOPS = 8
FactKind = common_pb2.FactKind
# What arrives for an image after it, by tag: cosign's scheme (`sha256-<hex>.sig`, `.att`,
# `.sbom`) and the OCI referrers tag schema (`sha256-<hex>`: the index of the manifests whose
# `subject` is the image, kept by the pushing client where the registry has no referrers API).
METADATA_TAG = re.compile(r"^(sha256)-([0-9a-f]{64})\.(sig|att|sbom)$")
REFERRERS_TAG = re.compile(r"^(sha256)-([0-9a-f]{64})$")


def is_metadata_tag(tag: str) -> bool:
    """A tag that holds a signature, attestation, SBOM or referrers index of an image (never
    mirrored as an image of its own)."""
    return METADATA_TAG.match(tag) is not None or REFERRERS_TAG.match(tag) is not None


# The engine's kinds (signature, attestation, sbom: transfer_service/engine/referrers.py
# classifies a referrer by its artifact type) by cosign tag suffix, and the policy's words.
SUFFIX_KINDS = {suffix.lstrip("."): kind for kind, suffix in TAG_SUFFIXES.items()}
KIND_WORDS = {kind: word for word, kind in COPY_KINDS.items()}
METADATA_KINDS = {"signature": "signature", "attestation": "attestation", "sbom": "SBOM"}
SCAN_FACTS = frozenset(
    {
        FactKind.FACT_KIND_COMPONENTS,
        FactKind.FACT_KIND_LICENSES,
        FactKind.FACT_KIND_VULNERABILITIES,
    }
)
# Which facts each kind of metadata feeds, by where it was found: what a rule reads from it,
# so what its arrival re-evaluates. The scanner reads SBOMs and attestations both under
# cosign's tags and among the image's OCI referrers (scanner/scan.py attached_reports; a
# referrer's kind is the engine's kind_of), and signatures are read from both places
# (gateway/signatures.py), so a kind feeds the same facts wherever it was found. Any other
# referrer type feeds nothing.
TAG_FACTS = {
    "signature": frozenset({FactKind.FACT_KIND_SIGNATURES}),
    "attestation": SCAN_FACTS | {FactKind.FACT_KIND_SIGNATURES},
    "sbom": SCAN_FACTS,
}
REFERRER_FACTS = dict(TAG_FACTS)
# Runs that a late signature, attestation, SBOM or scan report may change.
UNDECIDED = frozenset({Run.STATE_NOT_MATCHED, Run.STATE_BLOCKED, Run.STATE_PENDING})
# distribution 2.8.2 sends a manifest push event before it links the tag (the PUT has not
# answered yet), so a read right after the event can 404: ask again, waiting the project's
# backoff (0.1 s doubling, full jitter), for up to 1.5 s in all.
TAG_LINK_BACKOFF = Backoff(base=0.1, cap=0.8)
TAG_LINK_WAIT_S = 1.5
TAG_LINK_MAX_TRIES = 16


class TransientError(Exception):
    """A dependency is unavailable right now: try the whole event again later."""


class SourceRefused(Exception):
    """Reading the source failed in a way another try will not mend (credentials refused,
    an endpoint gone, a malformed answer): the push fails now, saying why."""


def source_error(what: str, exc: BaseException) -> Exception:
    """`what` failed with `exc`: TransientError when the one retry policy
    (servicekit.retry.is_retryable) says another try may pass, else SourceRefused."""
    if is_retryable(exc):
        return TransientError(f"{what}: {exc}")
    return SourceRefused(f"{what}: {exc}")


@dataclasses.dataclass(frozen=True)
class Push:
    """An image to act on: where it is and which event (or sweep) brought it."""

    event_id: str
    trigger: int
    endpoint: str
    repository: str
    tag: str
    digest: str
    # Tag templates render with this time, so a replayed event renders the same tag.
    evaluation_time: float
    # What made it, in words (a poll, late metadata), for the run.
    cause: str = ""
    poll_id: str = ""
    # The digest the source tag had before (a poll saw the tag move), for the run.
    previous_digest: str = ""
    # A poll's listings of destination repositories (saves a HEAD per new tag).
    destination_tags: DestinationTags | None = None
    # The scanner scans again rather than answer its cached report: an SBOM or attestation
    # it reads arrived after that report (only the re-evaluation for that arrival asks).
    rescan: bool = False


def chain_text(chain: tuple[Hop, ...] | list[Hop]) -> str:
    return " -> ".join(f"{e}/{r}:{t}" for e, r, t in chain)


def explain(result: policy_pb2.PolicyResult) -> str:
    """Why a policy did not match: the reason plus every clause that evaluated false."""
    parts = []
    if result.reason:
        parts.append(result.reason)
    failed = [c for c in result.explanation.clauses if not c.result]
    if failed:
        parts.append(
            "failed clauses: "
            + "; ".join(f"{c.clause} (value: {c.value})" if c.value else c.clause for c in failed)
        )
    if result.explanation.missing_facts:
        names = [
            common_pb2.FactKind.Name(k).removeprefix("FACT_KIND_").lower()
            for k in result.explanation.missing_facts
        ]
        parts.append("missing facts: " + ", ".join(names))
    return "; ".join(parts) or "the rule did not match"


class Runner:
    """Turns a Push into runs; shared by the inbox worker, ApplyPolicy and Reconcile.

    The source registry is the truth, not the event: the tag is resolved at the source (HEAD)
    and the digest it points to now is what gets evaluated and copied. Pushes our own
    transfers made are recognised by their destination and carry the chain they came
    through, so a run never copies into a place already on its chain.
    """

    def __init__(
        self,
        policy: policy_pb2_grpc.PolicyServiceStub,
        transfer: transfer_pb2_grpc.TransferServiceStub,
        gatherer: FactGatherer,
        runs: RunStore,
        tracker: TransferTracker,
        max_hops: int = DEFAULT_MAX_HOPS,
        shared_lock: Callable[[str], AbstractAsyncContextManager[None]] | None = None,
    ) -> None:
        self.policy = policy
        self.transfer = transfer
        self.gatherer = gatherer
        self.runs = runs
        self.db = runs.db
        self.tracker = tracker
        self.max_hops = max_hops
        # One decision at a time per (policy, source image): an event and a sweep never both
        # start a transfer for the same thing. `shared_lock` extends that to other replicas
        # (an event on one, an ApplyPolicy on another).
        self._locks: defaultdict[tuple[str, ...], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._lock_users: Counter[tuple[str, ...]] = Counter()
        self._shared_lock = shared_lock

    async def act(
        self, push: Push, only_policy: str = "", kinds: frozenset[int] | None = None
    ) -> list[RunRecord]:
        """Evaluate and act; returns the runs (new or, on a replay, the ones recorded before).

        `kinds`: the facts `only_policy` needs, when the caller knows them (a poll has the
        policy at hand): saves asking the policy service for the repository's requirements.
        Raises TransientError when a dependency is unavailable (the caller retries later).
        """
        try:
            return await self._act(push, only_policy, kinds)
        except grpc.aio.AioRpcError as err:
            if transient_rpc_error(err):
                raise TransientError(f"{err.code().name}: {err.details()}") from err
            raise

    async def evaluate_only(
        self, push: Push, policy_id: str
    ) -> policy_pb2.PolicyResult | None:
        """The policy's verdict on the image now (facts gathered as for a run), copying nothing."""
        req = await self.policy.GetFactRequirements(
            policy_pb2.GetFactRequirementsRequest(
                repository=push.repository, endpoint=push.endpoint
            ),
            timeout=RPC_TIMEOUT_S,
        )
        gathered = await self._facts(push, push.digest, set(req.kinds))
        resp = await self.policy.Evaluate(
            policy_pb2.EvaluateRequest(facts=gathered.facts, endpoint=push.endpoint),
            timeout=RPC_TIMEOUT_S,
        )
        return next((r for r in resp.results if r.policy_id == policy_id), None)

    async def record_failure(self, push: Push, message: str) -> list[RunRecord]:
        """The push could not be acted on at all (given up): a FAILED run per policy."""
        try:
            return await self._record_all(push, Run.STATE_FAILED, message)
        except grpc.aio.AioRpcError as err:
            log.warning("cannot record the failure of %s: %s", push.event_id, err.code().name)
            return []

    async def _act(
        self, push: Push, only_policy: str, kinds: frozenset[int] | None = None
    ) -> list[RunRecord]:
        meta = METADATA_TAG.match(push.tag)
        index = REFERRERS_TAG.match(push.tag)
        # Not an image: metadata of one. Pushed (or found new by a poll), it re-evaluates that
        # image's undecided runs and follows it to where it was mirrored. Apply and Reconcile
        # never copy it as an image: the image's own runs carry it when their policy copies
        # referrers.
        # A push concerns every policy of the image; a poll only the policy polling (each
        # policy's own poll finds the tag new).
        only = only_policy if push.trigger == Run.TRIGGER_SCHEDULE else ""
        if meta is not None and push.trigger in ARRIVAL_TRIGGERS:
            kind = SUFFIX_KINDS[meta[3]]
            cause = f"{METADATA_KINDS[kind]} {push.tag} arrived"
            subject = f"{meta[1]}:{meta[2]}"
            return await self._late_metadata(
                push, subject, {kind}, TAG_FACTS[kind], cause, only
            )
        if index is not None and push.trigger in ARRIVAL_TRIGGERS:
            return await self._late_index(push, f"{index[1]}:{index[2]}", only)
        if (meta is not None or index is not None) and push.trigger in SWEEP_TRIGGERS:
            return []
        if kinds is None or not only_policy:
            req = await self.policy.GetFactRequirements(
                policy_pb2.GetFactRequirementsRequest(
                    repository=push.repository, endpoint=push.endpoint
                ),
                timeout=RPC_TIMEOUT_S,
            )
            if req.policy_count == 0:
                return []
            kinds = frozenset(req.kinds)
        digest, note, attached = await self._verify(push)
        if not digest:
            return await self._record_all(push, note[0], note[1], only_policy)
        if attached is not None:
            return await self._late_attachment(push, digest, attached)
        parent = (
            await self.db.run(
                self.runs.made_by_us, push.endpoint, push.repository, push.tag, digest
            )
            if push.trigger in PUSH_TRIGGERS
            else None
        )
        provenance = parent.chain() if parent is not None else ()
        gathered = await self._facts(push, digest, set(kinds))
        facts = gathered.facts
        when = Timestamp()
        when.FromNanoseconds(int(push.evaluation_time * 1e9))
        resp = await self.policy.Evaluate(
            policy_pb2.EvaluateRequest(
                facts=facts, explain=True, evaluation_time=when, endpoint=push.endpoint
            ),
            timeout=RPC_TIMEOUT_S,
        )
        notes = [n for n in (note[1], *gathered.notes) if n]
        out: list[RunRecord] = []
        for result in resp.results:
            if only_policy and result.policy_id != only_policy:
                continue
            if not _triggered_by(result, push.trigger):
                continue
            rec = await self._one(push, digest, result, provenance, notes, gathered.scan_failed)
            if rec is not None:
                out.append(rec)
        return out

    async def _late_metadata(
        self,
        push: Push,
        subject: str,
        kinds: set[str],
        reads: frozenset[int],
        cause: str,
        only_policy: str = "",
    ) -> list[RunRecord]:
        """Signatures, attestations or SBOMs (`kinds`) of `subject` arrived: re-evaluate, once,
        its undecided runs whose rules read what they feed (`reads`), and carry them to where
        policies that copy such referrers already mirrored the image (of `only_policy`
        alone, when given)."""
        runs = await self._reevaluate(
            push.endpoint,
            push.repository,
            subject,
            reads,
            cause,
            push.event_id,
            push.evaluation_time,
            # The scanner's cached report predates what arrived: it must read the image again.
            rescan=bool(reads & SCAN_FACTS),
            only_policy=only_policy,
        )
        return runs + await self._carry_referrer(push, subject, kinds, cause, only_policy)

    async def _late_index(
        self, push: Push, subject: str, only_policy: str = ""
    ) -> list[RunRecord]:
        """The `sha256-<hex>` referrers index of `subject` was pushed (a registry without the
        referrers API: the pusher of a manifest with a subject keeps it): late metadata of
        the kinds its entries' artifact types name."""
        if self.gatherer.resolver is None:
            return []
        try:
            async with self.gatherer.resolver.client_for(push.endpoint) as rc:
                index = await rc.get_manifest(push.repository, push.tag)
        except NotFound:
            return []  # replaced or deleted since: its next push says what it holds
        except Exception as exc:
            what = f"cannot read {push.repository}:{push.tag} at the source"
            raise source_error(what, exc) from exc
        entries = parse_index(index.data)
        kinds = {kind_of(e.artifact_type, e.annotations) for e in entries}
        if not kinds:
            return []
        reads = frozenset().union(*(REFERRER_FACTS.get(k, frozenset()) for k in kinds))
        named = ", ".join(sorted(METADATA_KINDS.get(k, k) for k in kinds))
        cause = f"referrers index {push.tag} arrived ({named})"
        return await self._late_metadata(push, subject, kinds, reads, cause, only_policy)

    async def _late_attachment(
        self, push: Push, digest: str, attached: Attachment
    ) -> list[RunRecord]:
        """A manifest with a `subject` was pushed under an ordinary tag: an artifact attached
        to that image (a referrer), never mirrored as an image of its own.

        Where the registry has the referrers API, this push is how the referrer arrives.
        Without it the pusher also writes the `sha256-<hex>` index, whose push announces the
        referrer (acting on both would act twice); the engine finds it through that index.
        """
        assert self.gatherer.resolver is not None  # _verify read the manifest through it
        try:
            async with self.gatherer.resolver.client_for(push.endpoint) as rc:
                api = await rc.has_referrers_api(push.repository, attached.subject)
        except Exception as exc:
            raise source_error(
                f"cannot ask {push.endpoint} for the referrers of {attached.subject}", exc
            ) from exc
        log.info(
            "%s/%s:%s (%s) is attached to %s: a referrer, not an image%s",
            push.endpoint,
            push.repository,
            push.tag,
            digest,
            attached.subject,
            "" if api else "; its sha256-<hex> index announces it",
        )
        if not api:
            return []
        kind = kind_of(attached.artifact_type, attached.annotations)
        cause = f"{METADATA_KINDS.get(kind, kind)} {push.repository}@{digest} arrived"
        return await self._late_metadata(
            push, attached.subject, {kind}, REFERRER_FACTS.get(kind, frozenset()), cause
        )

    async def _carry_referrer(
        self, push: Push, subject: str, kinds: set[str], cause: str, only_policy: str = ""
    ) -> list[RunRecord]:
        """Copy the image again (its blobs and manifest are all skipped) with the referrers of
        `kinds`, for every policy (or `only_policy`) that mirrored it and copies any of them."""
        out: list[RunRecord] = []
        latest = await self.db.run(
            self.runs.latest_for_digest, push.endpoint, push.repository, subject
        )
        for prior in latest:
            if prior.state != Run.STATE_SUCCEEDED or not prior.dst_tag:
                continue
            if only_policy and prior.policy_id != only_policy:
                continue
            if push.poll_id and prior.poll_id == push.poll_id:
                # Copied by this same poll, after its listing showed what arrived: that copy
                # already carried it.
                continue
            pol = await self._policy(prior.policy_id)
            if pol is None or not pol.enabled:
                continue
            takes = wanted(pol.copy_referrers)
            carried = {k for k in kinds if takes.takes(k)}
            if not carried:
                continue
            # Only what arrived; a kind the engine has no word for travels under "all".
            words = sorted({KIND_WORDS.get(k, "all") for k in carried})
            rec = RunRecord(
                id="",
                policy_id=prior.policy_id,
                policy_name=prior.policy_name,
                event_id=f"{push.event_id}/{prior.policy_id}/{prior.src_tag}/carry",
                trigger=Run.TRIGGER_LATE_METADATA,
                src_endpoint=prior.src_endpoint,
                src_repository=prior.src_repository,
                src_tag=prior.src_tag,
                src_digest=subject,
                dst_endpoint=prior.dst_endpoint,
                dst_repository=prior.dst_repository,
                dst_tag=prior.dst_tag,
                state=Run.STATE_PENDING,
                provenance=prior.provenance,
                hop=prior.hop,
                cause=f"{cause}: copied to where run {prior.id} mirrored the image",
            )
            rec = await self.db.run(self.runs.upsert_started, rec)
            if rec.state == Run.STATE_PENDING:
                again = dataclasses.replace(
                    push, event_id=rec.event_id, tag=prior.src_tag, digest=subject
                )
                result = policy_pb2.PolicyResult(copy_referrers=words, platforms=pol.platforms)
                rec = await self._start(again, subject, rec, pol.overwrite, result)
            if rec.state == Run.STATE_RUNNING:
                await self.tracker.track(rec)
            out.append(rec)
        return out

    async def report_arrived(self, digest: str, repository: str) -> list[RunRecord]:
        """A scan report was imported for an image: re-evaluate its runs that read scans."""
        out: list[RunRecord] = []
        when = time.time()
        for endpoint in await self.db.run(self.runs.endpoints_for_digest, repository, digest):
            out += await self._reevaluate(
                endpoint,
                repository,
                digest,
                SCAN_FACTS,
                "a scan report was imported",
                f"report:{digest}:{when:.6f}",
                when,
            )
        return out

    async def _reevaluate(
        self,
        endpoint: str,
        repository: str,
        subject: str,
        reads: frozenset[int],
        cause: str,
        event_id: str,
        evaluation_time: float,
        rescan: bool = False,
        only_policy: str = "",
    ) -> list[RunRecord]:
        """Evaluate again, once, the latest undecided run of each policy (or `only_policy`) of
        the image whose rule reads `reads`, while its tag still names the image. `rescan`: the
        scanner scans the image again first (once: the next policies read its new report)."""
        out: list[RunRecord] = []
        for prior in await self.db.run(self.runs.latest_for_digest, endpoint, repository, subject):
            if prior.state not in UNDECIDED or (only_policy and prior.policy_id != only_policy):
                continue
            waiting = await self.db.run(self.runs.is_waiting, prior.id)
            if prior.state == Run.STATE_PENDING and not waiting:
                continue  # in flight, not waiting
            pol = await self._policy(prior.policy_id)
            if pol is None or not pol.enabled or not set(pol.required_facts) & reads:
                continue
            again = Push(
                event_id=f"{event_id}/{prior.policy_id}/{prior.src_tag}",
                trigger=Run.TRIGGER_LATE_METADATA,
                endpoint=endpoint,
                repository=repository,
                tag=prior.src_tag,
                digest=subject,
                evaluation_time=evaluation_time,
                cause=cause,
                rescan=rescan,
            )
            current, _, _ = await self._verify(
                dataclasses.replace(again, trigger=Run.TRIGGER_NOTIFY, digest="")
            )
            if current != subject:
                continue  # the tag has moved on: its own push decides
            needs = frozenset(pol.required_facts)
            runs = await self._act(again, prior.policy_id, needs)
            if needs & SCAN_FACTS:
                rescan = False  # scanned again just now: its report is the new one
            ended = bool(runs) and await self.db.run(self.runs.end_wait, prior.id)
            if ended:
                closed, changed = await self.db.run(
                    self.runs.transition,
                    prior.id,
                    state=Run.STATE_SKIPPED,
                    message=f"re-evaluated by run {runs[0].id}: {again.cause}",
                )
                if closed is not None and changed:
                    count_run(closed)
            out.extend(runs)
        return out

    async def expire_waits(self) -> int:
        """Decide the runs whose wait for a signature is over: not matched, saying why.
        (Once each: the wait is ended by one caller only, whichever replica it runs on.)"""
        ended = 0
        for run_id, why in await self.db.run(self.runs.waits_over, time.time()):
            if not await self.db.run(self.runs.end_wait, run_id):
                continue
            rec, changed = await self.db.run(
                self.runs.transition,
                run_id,
                state=Run.STATE_NOT_MATCHED,
                message=f"no signature arrived in time; {why}",
            )
            if rec is not None and changed:
                count_run(rec)
                await self.tracker.on_final(rec)
                ended += 1
        return ended

    async def _verify(self, push: Push) -> tuple[str, tuple[int, str], Attachment | None]:
        """The digest the tag points to at the source now, a note on the event's claim, and
        (pushes only) what the manifest is attached to when it names a `subject`.

        Returns ("", (state, why), None) when nothing may be copied: the tag is gone, or the
        gateway cannot ask the registry (an event it cannot verify is not acted on).
        """
        if push.trigger not in PUSH_TRIGGERS and push.digest:
            return push.digest, (0, ""), None  # a sweep has just read the tag itself
        if self.gatherer.resolver is None:
            return "", (
                Run.STATE_BLOCKED,
                "not verified: the gateway has no registry access to check the event's tag "
                "at the source, so it does not act on it",
            ), None
        ref = ImageRef(push.endpoint, push.repository, push.tag, push.digest)
        # Only a registry's own event can come before its tag is linked.
        waits = TAG_LINK_WAIT_S if push.trigger == Run.TRIGGER_EVENT else 0.0
        waited, tries = 0.0, 0
        while True:
            tries += 1
            try:
                current, attached = await self.gatherer.resolve(ref)
            except Exception as exc:
                if not _not_found(exc):
                    raise source_error(
                        f"cannot read {push.endpoint}/{push.repository}:{push.tag} at the "
                        "source", exc
                    ) from exc
                current, attached = "", None
            if current or waited >= waits or tries >= TAG_LINK_MAX_TRIES:
                break
            delay = min(TAG_LINK_BACKOFF.delay(tries - 1), waits - waited)
            await asyncio.sleep(delay)
            waited += delay
        if not current:
            claimed = f" (the event named {push.digest})" if push.digest else ""
            return "", (
                Run.STATE_SKIPPED,
                f"tag {push.tag} does not exist in {push.repository} on endpoint "
                f"{push.endpoint}{claimed}: nothing copied",
            ), None
        if push.digest and push.digest != current:
            return current, (
                0,
                f"the event named {push.digest} but the tag points at {current} now: "
                "acting on what the source holds",
            ), attached
        return current, (0, ""), attached

    async def _facts(self, push: Push, digest: str, kinds: set[int]) -> Gathered:
        ref = ImageRef(push.endpoint, push.repository, push.tag, digest)
        try:
            return await self.gatherer.gather(ref, kinds, push.rescan)
        except grpc.aio.AioRpcError:
            raise
        except Exception as exc:
            # Registry unreachable: retried (the worker gives up eventually); refused: failed.
            raise source_error(f"cannot read facts of {push.repository}:{push.tag}", exc) from exc

    async def _record_all(
        self, push: Push, state: int, message: str, only_policy: str = ""
    ) -> list[RunRecord]:
        """One run in `state` for every enabled policy of the push's source (no evaluation)."""
        out = []
        token = ""
        while True:
            resp = await self.policy.ListPolicies(
                policy_pb2.ListPoliciesRequest(
                    source_endpoint=push.endpoint,
                    source_repository=push.repository,
                    page_size=1000,
                    page_token=token,
                ),
                timeout=RPC_TIMEOUT_S,
            )
            for pol in resp.policies:
                if not pol.enabled or (only_policy and pol.id != only_policy):
                    continue
                rec = RunRecord(
                    id="",
                    policy_id=pol.id,
                    policy_name=pol.name,
                    event_id=push.event_id,
                    trigger=push.trigger,
                    src_endpoint=push.endpoint,
                    src_repository=push.repository,
                    src_tag=push.tag,
                    src_digest=push.digest,
                    dst_endpoint=pol.target.endpoint,
                    dst_repository=pol.target.repository,
                    dst_tag="",
                    state=state,
                    message=message,
                )
                stored = await self.db.run(self.runs.upsert_started, rec)
                if stored is rec:
                    count_run(stored)
                    await self.tracker.on_final(stored)
                out.append(stored)
            token = resp.next_page_token
            if not token:
                return out

    async def _one(
        self,
        push: Push,
        digest: str,
        result: policy_pb2.PolicyResult,
        provenance: tuple[Hop, ...],
        notes: list[str],
        scan_failed: str = "",
    ) -> RunRecord | None:
        base = RunRecord(
            id="",
            policy_id=result.policy_id,
            policy_name=result.policy_name,
            event_id=push.event_id,
            trigger=push.trigger,
            src_endpoint=push.endpoint,
            src_repository=push.repository,
            src_tag=push.tag,
            src_digest=digest,
            dst_endpoint=result.target.endpoint,
            dst_repository=result.target.repository,
            dst_tag=result.tag,
            state=Run.STATE_PENDING,
            provenance=provenance,
            hop=len(provenance),
            cause=push.cause,
            poll_id=push.poll_id,
            previous_digest=push.previous_digest,
        )
        key = (result.policy_id, push.endpoint, push.repository, push.tag, digest)
        self._lock_users[key] += 1
        try:
            async with self._locks[key], self._across_replicas(key):
                cover = await self._covering(push, digest, result)
                if cover is not None:
                    return cover
                replay = await self.db.run(
                    self.runs.by_event_policy, push.event_id, result.policy_id
                )
                wait = _signature_wait(result) if replay is None else 0.0
                if replay is None and result.blocked and scan_failed:
                    # Not a gate that lacks data to decide: the image cannot be scanned.
                    base.state, base.message = Run.STATE_FAILED, scan_failed
                elif wait > 0:
                    until = time.time() + wait
                    base.message = (
                        f"waiting up to {wait:.0f}s for a signature (until "
                        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(until))}); "
                        + explain(result)
                    )
                elif replay is None:
                    base.state, base.message = await self._decide(push, digest, result, base)
                    if notes and base.state != Run.STATE_PENDING:
                        base.message = "; ".join([base.message, *notes])
                rec = await self.db.run(self.runs.upsert_started, base)
                if rec is base and wait > 0:
                    await self.db.run(
                        self.runs.wait_for_signature, rec.id, time.time() + wait, explain(result)
                    )
                if rec is base and rec.state != Run.STATE_PENDING:
                    count_run(rec)
                    if rec.state != Run.STATE_NOT_MATCHED:
                        await self.tracker.on_final(rec)
                if rec.state == Run.STATE_PENDING and not await self.db.run(
                    self.runs.is_waiting, rec.id
                ):
                    rec = await self._start(push, digest, rec, result.overwrite, result)
                if rec.state == Run.STATE_RUNNING:
                    await self.tracker.track(rec)
                log.info(
                    "policy %s: run %s %s %s",
                    rec.policy_name,
                    rec.id,
                    run_state_name(rec.state),
                    rec.message,
                    extra={
                        "policy": rec.policy_name,
                        "policy_id": rec.policy_id,
                        "run": rec.id,
                        "state": run_state_name(rec.state),
                        "transfer": rec.transfer_id,
                        "source": f"{push.endpoint}/{push.repository}:{push.tag}",
                        "destination": f"{rec.dst_endpoint}/{rec.dst_repository}:{rec.dst_tag}",
                    },
                )
                return rec
        finally:
            # Dropped when nobody holds or waits for it (the dict stays small).
            self._lock_users[key] -= 1
            if not self._lock_users[key]:
                del self._lock_users[key]
                self._locks.pop(key, None)

    def _across_replicas(self, key: tuple[str, ...]) -> AbstractAsyncContextManager[None]:
        if self._shared_lock is None:
            return contextlib.nullcontext()
        return self._shared_lock("decide:" + "\0".join(key))

    async def _decide(
        self, push: Push, digest: str, result: policy_pb2.PolicyResult, base: RunRecord
    ) -> tuple[int, str]:
        """The state a new run starts in (PENDING: copy) and why it does not copy otherwise."""
        if result.blocked:
            return Run.STATE_BLOCKED, "blocked: " + explain(result)
        if not result.matched:
            return Run.STATE_NOT_MATCHED, explain(result)
        dst = (result.target.endpoint, result.target.repository)
        where = f"{dst[1]}:{result.tag} on endpoint {dst[0]}"
        prior = await self.db.run(
            self.runs.mirrored,
            result.policy_id,
            push.endpoint,
            push.repository,
            push.tag,
            digest,
            push.event_id,
        )
        if prior is not None and prior.state == Run.STATE_RUNNING:
            return Run.STATE_SKIPPED, f"already being mirrored by run {prior.id}"
        if prior is not None and prior.dst_tag != result.tag:
            return Run.STATE_SKIPPED, (
                f"already mirrored as {prior.dst_repository}:{prior.dst_tag} on endpoint "
                f"{prior.dst_endpoint} by run {prior.id}"
            )
        held = await self._destination_digest(dst[0], dst[1], result.tag, push.destination_tags)
        if held == digest:
            return Run.STATE_SKIPPED, f"up to date: {where} already holds {digest}"
        if held and result.overwrite == policy_pb2.OVERWRITE_NEVER:
            return Run.STATE_SKIPPED, (
                f"not overwritten: {where} holds {held} and the policy never overwrites"
            )
        chain = (*base.provenance, (push.endpoint, push.repository, push.tag))
        places = {(e, r) for e, r, _ in chain}
        if dst in places:
            return Run.STATE_BLOCKED, (
                f"blocked: {dst[0]}/{dst[1]} is already on this image's promotion chain "
                f"({chain_text(chain)}): copying it there again would loop"
            )
        if len(base.provenance) >= self.max_hops:
            return Run.STATE_BLOCKED, (
                f"blocked: hop limit {self.max_hops} reached ({chain_text(chain)})"
            )
        if push.trigger in SWEEP_TRIGGERS:
            # A pushed tag was read whole by _verify; a sweep's tag is read here, only when it
            # would be copied (not every tag at every Reconcile). Polls copy the upstream's
            # tags as they are listed.
            attached = await self._attachment(push, digest)
            if attached is not None:
                return Run.STATE_SKIPPED, (
                    f"{push.repository}:{push.tag} is an artifact attached to "
                    f"{attached.subject} (a referrer), not an image: it travels with that "
                    "image when the image's policy copies referrers"
                )
        return Run.STATE_PENDING, ""

    async def _attachment(self, push: Push, digest: str) -> Attachment | None:
        try:
            return await self.gatherer.attachment(push.endpoint, push.repository, digest)
        except Exception as exc:
            what = f"cannot read {push.repository}@{digest} at the source"
            raise source_error(what, exc) from exc

    async def _destination_digest(
        self, endpoint: str, repository: str, tag: str, listing: DestinationTags | None = None
    ) -> str:
        """What the destination tag holds now ('' when absent or when it cannot be read)."""
        resolver = self.gatherer.resolver
        if resolver is None or not tag:
            return ""
        if listing is not None:
            tags = await listing.listed(endpoint, repository)
            if tags is not None and tag not in tags:
                return ""
        try:
            async with resolver.client_for(endpoint) as rc:
                d = await rc.head_manifest(repository, tag)
        except Exception as exc:
            # The transfer will find out for itself (and fail_if_tag_exists still guards).
            log.info("cannot read %s/%s:%s: %s", endpoint, repository, tag, exc)
            return ""
        return d.digest if d is not None else ""

    async def _covering(
        self, push: Push, digest: str, result: policy_pb2.PolicyResult
    ) -> RunRecord | None:
        """For sweeps: the run of this policy that already handles this image, if any.

        Reconcile leaves alone whatever a run covers (except failures, which it retries);
        Apply re-evaluates tags that did not match before but never mirrors twice.
        """
        if push.trigger not in SWEEP_TRIGGERS or not digest:
            return None
        runs = await self.db.run(
            self.runs.covering, result.policy_id, push.endpoint, push.repository, push.tag, digest
        )
        if push.trigger == Run.TRIGGER_RECONCILE:
            keep = [r for r in runs if r.state not in RETRIED_BY_RECONCILE]
        else:
            keep = [r for r in runs if r.state in ACTIVE_OR_DONE]
        return keep[-1] if keep else None

    async def restart_pending(self, older_than_s: float = 0.0) -> int:
        """After a crash between recording a sweep's run and starting its transfer: start it.

        Event runs need nothing here (their event is still pending and replays); sweeps have
        no inbox row, so their PENDING runs are restarted with the same idempotency key.
        `older_than_s`: only runs unchanged that long (replicas: not one another replica is
        starting right now; a second StartTransfer with the key would be harmless anyway).
        """
        started = 0
        before = time.time() - older_than_s if older_than_s > 0 else None
        for rec in await self.db.run(self.runs.in_states, [Run.STATE_PENDING], before):
            if rec.trigger not in SWEEP_TRIGGERS:
                continue
            if await self.db.run(self.runs.is_waiting, rec.id):
                continue
            push = Push(
                event_id=rec.event_id,
                trigger=rec.trigger,
                endpoint=rec.src_endpoint,
                repository=rec.src_repository,
                tag=rec.src_tag,
                digest=rec.src_digest,
                evaluation_time=rec.create_time,
            )
            try:
                rec = await self._start(push, rec.src_digest, rec, await self._overwrite(rec))
            except grpc.aio.AioRpcError as err:
                log.warning("cannot restart run %s yet: %s", rec.id, err.code().name)
                continue
            if rec.state == Run.STATE_RUNNING:
                await self.tracker.track(rec)
            started += 1
        return started

    async def repair(self, old: RunRecord, held: str, event_id: str) -> RunRecord:
        """Copy a mirrored image again to the tag it was mirrored to (the destination drifted)."""
        rec = RunRecord(
            id="",
            policy_id=old.policy_id,
            policy_name=old.policy_name,
            event_id=event_id,
            trigger=Run.TRIGGER_RECONCILE,
            src_endpoint=old.src_endpoint,
            src_repository=old.src_repository,
            src_tag=old.src_tag,
            src_digest=old.src_digest,
            dst_endpoint=old.dst_endpoint,
            dst_repository=old.dst_repository,
            dst_tag=old.dst_tag,
            state=Run.STATE_PENDING,
            provenance=old.provenance,
            hop=old.hop,
            cause=(
                f"repair: {old.dst_repository}:{old.dst_tag} held {held or 'nothing'} instead "
                f"of {old.src_digest}"
            ),
        )
        rec = await self.db.run(self.runs.upsert_started, rec)
        if rec.state == Run.STATE_PENDING:
            push = Push(
                event_id=event_id,
                trigger=Run.TRIGGER_RECONCILE,
                endpoint=rec.src_endpoint,
                repository=rec.src_repository,
                tag=rec.src_tag,
                digest=rec.src_digest,
                evaluation_time=rec.create_time,
            )
            rec = await self._start(push, rec.src_digest, rec, policy_pb2.OVERWRITE_ALWAYS)
        if rec.state == Run.STATE_RUNNING:
            await self.tracker.track(rec)
        return rec

    async def _policy(self, policy_id: str) -> policy_pb2.Policy | None:
        """The policy, or None when it was deleted."""
        try:
            return await self.policy.GetPolicy(
                policy_pb2.GetPolicyRequest(id=policy_id), timeout=RPC_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    async def _overwrite(self, rec: RunRecord) -> int:
        pol = await self._policy(rec.policy_id)
        if pol is None:
            return policy_pb2.OVERWRITE_NEVER  # the policy is gone: touch nothing
        return int(pol.overwrite)

    async def _start(
        self,
        push: Push,
        digest: str,
        rec: RunRecord,
        overwrite: int,
        result: policy_pb2.PolicyResult | None = None,
    ) -> RunRecord:
        req = transfer_pb2.StartTransferRequest(
            source=common_pb2.ImageLocation(
                endpoint=push.endpoint,
                repository=push.repository,
                # By digest: mirror exactly what was verified even if the tag moved since.
                reference=digest or push.tag,
            ),
            destination=transfer_pb2.TransferDestination(
                endpoint=rec.dst_endpoint, repository=rec.dst_repository, tag=rec.dst_tag
            ),
            options=transfer_pb2.TransferOptions(
                fail_if_tag_exists=overwrite == policy_pb2.OVERWRITE_NEVER,
                # The tag is written only while the source tag still names this digest: of
                # two pushes of one tag, the older one never wins. A poll needs no check: it
                # saw the digest just now, and a later poll's copy of a moved tag runs after
                # this one (one job at a time per destination tag, in creation order).
                source_tag=push.tag if digest and push.trigger != Run.TRIGGER_SCHEDULE else "",
                platforms=list(result.platforms) if result is not None else [],
                copy_referrers=list(result.copy_referrers) if result is not None else [],
            ),
            # Same event + same policy = same job, across redeliveries and restarts.
            idempotency_key=f"{rec.event_id}/{rec.policy_id}",
        )
        try:
            tr = await self.transfer.StartTransfer(req, timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as err:
            if transient_rpc_error(err):
                raise
            msg = f"cannot start the transfer: {err.code().name}: {err.details()}"
            failed, changed = await self.db.run(
                self.runs.transition, rec.id, state=Run.STATE_FAILED, message=msg
            )
            assert failed is not None
            if changed:
                count_run(failed)
                await self.tracker.on_final(failed)
            return failed
        updated = await self.db.run(
            self.runs.update,
            rec.id,
            state=Run.STATE_RUNNING,
            message="transfer started",
            transfer_id=tr.id,
        )
        assert updated is not None
        return updated


def _signature_wait(result: policy_pb2.PolicyResult) -> float:
    """Seconds to wait for a signature (0: decide now)."""
    if result.matched or result.blocked or not result.HasField("wait_for_signature"):
        return 0.0
    return max(0.0, result.wait_for_signature.ToNanoseconds() / 1e9)


def _triggered_by(result: policy_pb2.PolicyResult, trigger: int) -> bool:
    """Registry events and Reconcile act only on push-triggered policies (the default);
    Apply, polls and late metadata act on the policy they were asked for."""
    kind = result.trigger.WhichOneof("kind") if result.HasField("trigger") else None
    if trigger in PUSH_TRIGGERS or trigger == Run.TRIGGER_RECONCILE:
        return kind in (None, "push")
    return True


def _not_found(exc: Exception) -> bool:
    from registry_client import errors as rc_errors

    return isinstance(exc, rc_errors.NotFound)
