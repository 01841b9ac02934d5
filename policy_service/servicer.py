"""mirror.v1.PolicyService on grpc.aio: policy CRUD, rule validation and evaluation.

Every policy is compiled once per version (on start and on each write) and kept in memory
beside a source index, so Evaluate never parses a rule nor scans all policies. Evaluate work
beyond the usual request's runs off the event loop with a deadline, and callers other than
the service are rate-limited (policy_service.offload).

UpdatePolicy masks: the mutable fields are name, description, source (or source.endpoint /
source.repository), rule, target (or target.endpoint / target.repository), tag_template,
time_zone, enabled, overwrite, allow_incomplete_facts and the trigger and copy settings
(trigger, platforms, keep_newest, deletions, copy_referrers, signature_wait); an empty mask
(or "*") replaces all of them. A mask naming id, create_time, update_time, etag,
required_facts, active_since or disabled_reason is refused with INVALID_ARGUMENT (they are
immutable or output only); values of those fields in the request body are ignored, except
etag, which when set must be current.
The deprecated source_repository is refused wherever a request sets or names it.

Policies are scoped by their source endpoint: Evaluate and GetFactRequirements name the
endpoint the image is in, and only policies reading that endpoint count. Saving (and
validate_only) checks the whole policy: fields, target mapping, loops, cycles and collisions
with other policies (`checks`), the source endpoint and the target's push permission.

Replicas: several processes may serve one PostgreSQL database. Each keeps its compiled copy
and, before serving an RPC, compares its change seq with the database's (one single-row
SELECT) and reloads what other replicas wrote since (policy_service.changes). Writes are
checked against an up-to-date copy and committed only if no replica wrote in between, else
checked again. On SQLite there is one process per data folder, so nothing is compared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta

from google.protobuf import empty_pb2
from grpc import aio
from mirror.v1 import common_pb2, policy_pb2, policy_pb2_grpc

from policy_service import checks, compiled, evaluation, mapping, settings, source_migration
from policy_service.changes import StaleView
from policy_service.compiled import CompiledPolicy
from policy_service.freshness import DEFAULT_MAX_VULNERABILITY_AGE
from policy_service.index import EndpointIndex
from policy_service.key_rpcs import TrustedKeyRpcs, check_rule_keys
from policy_service.offload import INLINE_WORK, EvaluationGuard, Job, evaluate_all, work_of
from policy_service.push_check import PushChecker
from policy_service.rules import RuleCompileError
from policy_service.rules.guard import RuleGuard
from policy_service.signature_gate import SignatureGate
from policy_service.store import EtagMismatch, NameTaken, PolicyMissing, PolicyRecord, PolicyStore
from policy_service.templates import TemplateError, compile_template
from policy_service.trusted_keys import KeyStore, TrustedKey
from policy_service.validate import time_zone_error, zone
from servicekit import errors, metrics, paging
from servicekit.auth import Token
from servicekit.retry import Backoff

log = logging.getLogger("policy_service")

SERVICE_NAME = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name

_MUTABLE_PATHS = {
    "name", "description", "source", "source.endpoint", "source.repository", "rule", "target",
    "target.endpoint", "target.repository", "tag_template", "time_zone", "enabled",
    "overwrite", "allow_incomplete_facts", *settings.MASK_PATHS,
}
_FIXED_PATHS = {
    "id", "create_time", "update_time", "etag", "required_facts", "active_since",
    "disabled_reason",
}
_SOURCE_REPLACED = (
    "source_repository was replaced by source {endpoint, repository}: name the source "
    "endpoint and its repository, e.g. source: {endpoint: dev, repository: \"team/**\"}"
)
# Writes refused because another replica wrote first, checked again before giving up.
_STALE_RETRIES = 8
_MATCHED = metrics.EVALUATIONS.labels(matched="true")
_NOT_MATCHED = metrics.EVALUATIONS.labels(matched="false")


def _now_us() -> int:
    return time.time_ns() // 1000


def _new_etag(version: int) -> str:
    return f"{version}-{secrets.token_hex(4)}"


def _fields_from(p: policy_pb2.Policy, paths: set[str]) -> dict[str, object]:
    """The record fields named by mask `paths`, with values taken from `p`."""
    out: dict[str, object] = {}
    for name in (
        "name", "description", "rule", "time_zone", "enabled", "overwrite",
        "allow_incomplete_facts",
    ):
        if name in paths:
            out[name] = getattr(p, name)
    if "source" in paths or "source.endpoint" in paths:
        out["source_endpoint"] = p.source.endpoint
    if "source" in paths or "source.repository" in paths:
        out["source_repository"] = p.source.repository
    if "tag_template" in paths:
        out["tag_template"] = p.tag_template or compiled.DEFAULT_TAG_TEMPLATE
    if "target" in paths or "target.endpoint" in paths:
        out["target_endpoint"] = p.target.endpoint
    if "target" in paths or "target.repository" in paths:
        out["target_repository"] = p.target.repository
    out.update(settings.record_fields(p, paths))
    return out


def _refuse_source_repository(p: policy_pb2.Policy, mask: Sequence[str] = ()) -> None:
    """The deprecated field, set in a request body or named in a mask, is refused."""
    if p.source_repository or "source_repository" in mask:
        raise errors.invalid_argument(
            "policy.source_repository: " + _SOURCE_REPLACED,
            [("policy.source_repository", _SOURCE_REPLACED)],
        )


def _mask_paths(mask: list[str]) -> set[str]:
    if not mask or mask == ["*"]:
        return set(_MUTABLE_PATHS)
    bad = []
    for path in mask:
        if path in _FIXED_PATHS:
            bad.append((f"update_mask.paths[{path!r}]", f"{path} is immutable or output only"))
        elif path not in _MUTABLE_PATHS:
            bad.append((
                f"update_mask.paths[{path!r}]",
                f"unknown field {path!r}; updatable fields: {', '.join(sorted(_MUTABLE_PATHS))}",
            ))
    if bad:
        raise errors.invalid_argument(
            "update_mask names fields that cannot be updated: "
            + ", ".join(p for p in mask if p not in _MUTABLE_PATHS),
            bad,
        )
    return set(mask)


def _require_endpoint(endpoint: str) -> None:
    if not endpoint:
        raise errors.invalid_argument(
            "endpoint is required: only policies whose source names the endpoint the image "
            "is in are evaluated",
            [("endpoint", "must not be empty")],
        )


def _compile_stored(rec: PolicyRecord) -> CompiledPolicy | PolicyRecord:
    """A stored policy compiled (leniently: see compile_policy), or itself when it no longer
    compiles (kept as broken: listed, never evaluated)."""
    try:
        return compiled.compile_policy(rec, strict=False)
    except errors.ApiError as err:
        log.error("policy %s (%s) no longer compiles: %s", rec.id, rec.name, err.message)
        return rec


def _evaluate_rule(request: policy_pb2.EvaluateRuleRequest) -> policy_pb2.EvaluateRuleResponse:
    """EvaluateRule's work, run in a rule worker process (see RuleGuard)."""
    rule, problems = compiled.check_rule(request.rule, "rule")
    if problems:
        raise errors.invalid_argument(
            "rule does not compile: " + "; ".join(d for _, d in problems), problems
        )
    required = sorted(int(k) for k in rule.required_facts)
    matched, exp, _ = evaluation.evaluate_rule(
        rule,
        required,
        evaluation.facts_from_proto(request.facts),
        evaluation.present_kinds(request.facts),
        explain=True,
    )
    return policy_pb2.EvaluateRuleResponse(matched=matched, explanation=exp)


class PolicyServicer(TrustedKeyRpcs, policy_pb2_grpc.PolicyServiceServicer):
    """The policy service; `push_checker` None skips the checks that ask the transfer service
    (source endpoint, target push permission) and the source migration (standalone use).

    `max_vulnerability_age`: older vulnerability data blocks rules that read vulnerabilities.
    `signature_wait`: how long a policy without its own signature_wait waits for a signature
    (0: decide at once). Trusted-key RPCs: policy_service.key_rpcs.
    """

    service_name = SERVICE_NAME

    def __init__(
        self, store: PolicyStore, push_checker: PushChecker | None, *,
        max_vulnerability_age: timedelta = DEFAULT_MAX_VULNERABILITY_AGE,
        migration_backoff: Backoff | None = None,
        signature_wait: timedelta = timedelta(0),
        tokens: Collection[Token] = (),
    ) -> None:
        self._store = store
        self._db = store.db
        # Other processes write only on PostgreSQL (one process per SQLite data folder).
        self._replicated = store.db.dialect == "postgresql"
        # The change seq the in-memory copy reflects; read before the rows it covers.
        self._seq = store.change_seq()
        self._keys = KeyStore(store.db)
        self._signatures = SignatureGate(self._keys, signature_wait // timedelta(microseconds=1))
        self._push = push_checker
        # Rules sent by callers: rate-limited, compiled and evaluated in a worker process
        # with a deadline (policy_service.rules.guard), never on the event loop.
        self._rules = RuleGuard(preload=("policy_service.rules", __name__))
        # Evaluate: large work off the event loop with a deadline, callers other than the
        # service (`tokens`: the server's, to tell its admin token) rate-limited.
        self._evaluations = EvaluationGuard(tokens)
        self._max_vulnerability_age = max_vulnerability_age
        self._migration_backoff = migration_backoff or Backoff(base=0.5, cap=30.0)
        self._migration: asyncio.Task[None] | None = None
        self._policies: dict[str, CompiledPolicy] = {}
        # Stored policies that no longer compile: listed, never evaluated.
        self._broken: dict[str, PolicyRecord] = {}
        self._index = EndpointIndex()
        # Serializes store writes with their in-memory effect, so memory follows commit order.
        self._write_lock = asyncio.Lock()
        self._load()

    def mount(self, server: aio.Server) -> None:
        policy_pb2_grpc.add_PolicyServiceServicer_to_server(self, server)

    async def start(self) -> None:
        """Start the source migration in the background (it waits for the transfer service)."""
        if self._migration is None:
            self._migration = asyncio.create_task(self._migrate_sources())

    async def stop(self) -> None:
        if self._migration is not None:
            self._migration.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._migration

    async def migrated(self) -> None:
        """Wait until the source migration has finished (tests, tools)."""
        if self._migration is not None:
            await asyncio.shield(self._migration)

    def _load(self) -> None:
        for rec in self._store.all():
            self._load_one(rec)
        log.info("loaded %d policies", len(self._policies))

    def _load_one(self, rec: PolicyRecord) -> None:
        """Compile a stored policy (leniently: see compile_policy), or keep it as broken."""
        self._take(_compile_stored(rec))

    def _take(self, got: CompiledPolicy | PolicyRecord) -> None:
        """Hold a compiled policy, or a stored one that no longer compiles as broken."""
        if isinstance(got, CompiledPolicy):
            self._apply(got)
            return
        self._policies.pop(got.id, None)
        self._broken[got.id] = got
        self._index.put(got.id, got.source_endpoint, got.source_repository)

    # -- replicas (policy_service.changes) ------------------------------------------------

    async def _refresh(self) -> None:
        """Bring the in-memory copy up to what other replicas committed before this call."""
        if not self._replicated:
            return
        if await self._db.run(self._store.change_seq) != self._seq:
            async with self._write_lock:
                await self._sync_locked()

    async def _sync_locked(self) -> None:
        """Reload what changed since `_seq` (the caller holds the write lock)."""
        if not self._replicated:
            return
        got = await self._db.run(self._read_changes, self._seq)
        if got is None:
            return
        seq, everything, policies, keys = got
        if everything:
            self._policies, self._broken, self._index = {}, {}, EndpointIndex()
        for policy_id, compiled_or_rec in policies.items():
            if compiled_or_rec is None:
                self._forget(policy_id)
            else:
                self._take(compiled_or_rec)
        self._keys.reload(keys, everything)
        log.debug("reloaded %d policies and %d keys changed by other replicas (seq %d -> %d)",
                  len(policies), len(keys), self._seq, seq)
        self._seq = seq

    def _read_changes(self, seq: int) -> tuple[
        int, bool, dict[str, CompiledPolicy | PolicyRecord | None], dict[str, TrustedKey | None]
    ] | None:
        """On the database's threads: what changed after `seq`, read and compiled."""
        ch = self._store.changes_since(seq)
        if ch is None:
            return None
        wanted: Collection[str] | None = None if ch.everything else ch.policies
        recs = self._store.get_many(wanted)
        policies = {i: None if r is None else _compile_stored(r) for i, r in recs.items()}
        keys = self._keys.read(None if ch.everything else ch.keys)
        return ch.seq, ch.everything, policies, keys

    async def _commit(self, prepare: Callable[[], Callable[[int], int] | None]) -> bool:
        """Commit one write made against an up-to-date copy (the caller holds the write lock).

        `prepare` runs after the copy is brought up to date: it checks (raising ApiError) and
        returns the write, which takes the seq it was checked at (None: nothing to write).
        When another replica wrote in between, the write is refused and all of it runs again.
        False: nothing was written.
        """
        for _ in range(_STALE_RETRIES):
            await self._sync_locked()
            write = prepare()
            if write is None:
                return False
            try:
                self._seq = await self._db.run(write, self._seq)
            except StaleView:
                continue
            return True
        raise errors.aborted(
            "policies kept changing on other replicas during this write; retry"
        )

    def _records(self) -> list[PolicyRecord]:
        """Every stored policy that compiles: what the graph checks compare against."""
        return [p.record for p in self._policies.values()]

    async def _migrate_sources(self) -> None:
        """Give each policy stored without a source endpoint one, or disable it (see
        source_migration); policies without one are never evaluated meanwhile."""
        if not any(not r.source_endpoint for r in [*self._records(), *self._broken.values()]):
            return
        if self._push is None:
            log.warning("policies without a source endpoint stay unmigrated: no transfer service")
            return
        names = await source_migration.wait_for_endpoints(self._push, self._migration_backoff)
        async with self._write_lock:
            await self._sync_locked()
            # In name order, so which of two conflicting policies is disabled is predictable.
            for rec in sorted([*self._records(), *self._broken.values()], key=lambda r: r.name):
                if not rec.source_endpoint:
                    await self._migrate_one(rec.id, names)

    async def _migrate_one(self, policy_id: str, endpoints: list[str]) -> None:
        planned: list[tuple[PolicyRecord, str]] = []

        def prepare() -> Callable[[int], int] | None:
            p = self._policies.get(policy_id)
            rec = p.record if p else self._broken.get(policy_id)
            if rec is None or rec.source_endpoint:
                return None  # deleted or migrated meanwhile (another replica)
            new, reason = self._migrated(rec, endpoints)
            planned[:] = [(new, reason)]
            return lambda seq: self._store.update(new, rec.etag, seq)

        try:
            if not await self._commit(prepare):
                return
        except (EtagMismatch, PolicyMissing):
            return  # changed or deleted meanwhile: the writer's version stands
        [(new, reason)] = planned
        self._load_one(new)
        if reason:
            log.warning("policy %s (%s) disabled: %s", new.id, new.name, reason)
        else:
            log.info("policy %s (%s) now reads endpoint %r", new.id, new.name,
                     new.source_endpoint)

    def _migrated(self, rec: PolicyRecord, endpoints: list[str]) -> tuple[PolicyRecord, str]:
        """`rec` with its source endpoint chosen, or disabled; and why it was disabled."""
        endpoint, reason = source_migration.choose(rec, endpoints)
        new = rec.evolve(source_endpoint=endpoint)
        if endpoint and rec.id not in self._broken:
            problem = mapping.target_error(rec.source_repository, rec.target_repository)
            if problem:
                reason = f"{source_migration.PREFIX}{problem}"
            else:
                try:
                    checks.check_graph(new, self._records())
                except errors.ApiError as err:
                    reason = f"{source_migration.PREFIX}{err.message}"
        if reason:
            new = new.evolve(enabled=False, disabled_reason=reason)
        version = rec.version + 1
        new = new.evolve(
            update_time_us=max(_now_us(), rec.update_time_us + 1), etag=_new_etag(version),
            version=version,
        )
        return new, reason

    def _apply(self, p: CompiledPolicy) -> None:
        self._policies[p.record.id] = p
        self._broken.pop(p.record.id, None)
        self._index.put(p.record.id, p.record.source_endpoint, p.record.source_repository)

    def _forget(self, policy_id: str) -> None:
        self._policies.pop(policy_id, None)
        self._broken.pop(policy_id, None)
        self._index.remove(policy_id)

    def _proto(self, policy_id: str) -> policy_pb2.Policy | None:
        p = self._policies.get(policy_id)
        if p is not None:
            return compiled.to_proto(p)
        rec = self._broken.get(policy_id)
        return compiled.record_to_proto(rec) if rec else None

    def _current(self, policy_id: str) -> PolicyRecord:
        if not policy_id:
            raise errors.invalid_argument("id is required", [("id", "must not be empty")])
        p = self._policies.get(policy_id)
        rec = p.record if p else self._broken.get(policy_id)
        if rec is None:
            raise errors.not_found(f"policy {policy_id!r} not found", reason="POLICY_NOT_FOUND")
        return rec

    async def CreatePolicy(
        self, request: policy_pb2.CreatePolicyRequest, context: aio.ServicerContext
    ) -> policy_pb2.Policy:
        p = request.policy
        _refuse_source_repository(p)
        await self._refresh()
        # validate_only with an id: checked as the replacement of that policy (its name and
        # its old version do not clash), which `mirrorctl apply --dry-run` needs for updates.
        replaces = self._current(p.id).id if request.validate_only and p.id else ""
        now = _now_us()
        rec = PolicyRecord(
            id=replaces if request.validate_only else secrets.token_hex(8),
            name=p.name,
            description=p.description,
            source_endpoint=p.source.endpoint,
            source_repository=p.source.repository,
            overwrite=p.overwrite,
            allow_incomplete_facts=p.allow_incomplete_facts,
            active_since_us=now if p.enabled and not request.validate_only else 0,
            rule=p.rule,
            target_endpoint=p.target.endpoint,
            target_repository=p.target.repository,
            tag_template=p.tag_template or compiled.DEFAULT_TAG_TEMPLATE,
            time_zone=p.time_zone,
            enabled=p.enabled,
            create_time_us=0 if request.validate_only else now,
            update_time_us=0 if request.validate_only else now,
            etag="" if request.validate_only else _new_etag(1),
            version=1,
            **settings.record_fields(p),
        )
        cp = await self._rules.vetted(compiled.compile_policy, rec)
        check_rule_keys(cp, self._keys)
        if await self._db.run(self._store.name_exists, rec.name, replaces):
            raise errors.already_exists(f"a policy named {rec.name!r} already exists")
        checks.check_graph(rec, self._records())
        await checks.check_remote(self._push, rec)
        if request.validate_only:
            return compiled.to_proto(cp)

        def prepare() -> Callable[[int], int]:
            checks.check_graph(rec, self._records())  # again: others may have been saved
            check_rule_keys(cp, self._keys)  # again: a key may have been deleted meanwhile
            return lambda seq: self._store.insert(rec, seq)

        async with self._write_lock:
            try:
                await self._commit(prepare)
            except NameTaken as err:
                raise errors.already_exists(f"a policy named {rec.name!r} already exists") from err
            self._apply(cp)
        log.info("created policy %s (%s)", rec.id, rec.name)
        return compiled.to_proto(cp)

    async def GetPolicy(
        self, request: policy_pb2.GetPolicyRequest, context: aio.ServicerContext
    ) -> policy_pb2.Policy:
        await self._refresh()
        policy_id = request.id
        if request.name and not policy_id:
            found = await self._db.run(self._store.id_of, request.name)
            if found is None:
                raise errors.not_found(
                    f"no policy is named {request.name!r}", reason="POLICY_NOT_FOUND"
                )
            policy_id = found
        self._current(policy_id)
        out = self._proto(policy_id)
        assert out is not None
        return out

    async def ListPolicies(
        self, request: policy_pb2.ListPoliciesRequest, context: aio.ServicerContext
    ) -> policy_pb2.ListPoliciesResponse:
        size = paging.page_size(request.page_size)
        source = request.source_repository
        if request.trigger not in ("", *settings.TRIGGER_KINDS):
            kinds = ", ".join(settings.TRIGGER_KINDS)
            raise errors.invalid_argument(
                f"unknown trigger {request.trigger[:100]!r}; use {kinds}",
                [("trigger", "unknown")],
            )
        filters = {
            "source_repository": source, "source_endpoint": request.source_endpoint,
            "endpoint": request.endpoint, "trigger": request.trigger,
        }
        state = paging.decode_token(request.page_token, expect=filters)
        after = str(state.get("after", ""))
        await self._refresh()
        only = self._listed(source, request.source_endpoint, request.endpoint, request.trigger)
        if only is not None and not only:
            return policy_pb2.ListPoliciesResponse()  # nothing passes: no database read
        recs = await self._db.run(self._store.page, after, size + 1, only)
        more = len(recs) > size
        recs = recs[:size]
        out = policy_pb2.ListPoliciesResponse()
        for rec in recs:
            p = self._policies.get(rec.id)
            out.policies.append(compiled.record_to_proto(rec, p.required if p else ()))
        if more:
            out.next_page_token = paging.encode_token({**filters, "after": recs[-1].name})
        return out

    def _listed(
        self, source: str, source_endpoint: str, endpoint: str, trigger: str = ""
    ) -> set[str] | None:
        """Ids passing ListPolicies' filters (None: no filter, every policy)."""
        if not (source or source_endpoint or endpoint or trigger):
            return None
        if source:
            ids = (
                self._index.match(source_endpoint, source) if source_endpoint
                else self._index.match_any(source)
            )
        elif source_endpoint:
            ids = self._index.on(source_endpoint)
        else:
            ids = set(self._policies) | set(self._broken)
        if endpoint:
            recs = {p.record.id: p.record for p in self._policies.values()} | self._broken
            ids = {
                i for i in ids
                if (r := recs.get(i)) is not None
                and endpoint in (r.source_endpoint, r.target_endpoint)
            }
        if trigger:
            recs = {p.record.id: p.record for p in self._policies.values()} | self._broken
            ids = {
                i for i in ids
                if (r := recs.get(i)) is not None and (r.trigger_kind or "push") == trigger
            }
        return ids

    async def UpdatePolicy(
        self, request: policy_pb2.UpdatePolicyRequest, context: aio.ServicerContext
    ) -> policy_pb2.Policy:
        p = request.policy
        _refuse_source_repository(p, list(request.update_mask.paths))
        paths = _mask_paths(list(request.update_mask.paths))
        await self._refresh()
        current = self._current(p.id)
        if p.etag and p.etag != current.etag:
            raise errors.aborted(
                f"policy {p.id!r} changed since it was read (etag {p.etag!r}, now "
                f"{current.etag!r}); read it again and retry"
            )
        version = current.version + 1
        now = max(_now_us(), current.update_time_us + 1)
        new = current.evolve(
            **_fields_from(p, paths),
            update_time_us=now,
            etag=_new_etag(version),
            version=version,
            disabled_reason="",
        )
        if new.enabled and not current.enabled:
            new = new.evolve(active_since_us=now)
        cp = await self._rules.vetted(compiled.compile_policy, new)
        check_rule_keys(cp, self._keys)
        if new.name != current.name and await self._db.run(
            self._store.name_exists, new.name, new.id
        ):
            raise errors.already_exists(f"a policy named {new.name!r} already exists")
        checks.check_graph(new, self._records())
        sample = mapping.sample_target
        await checks.check_remote(
            self._push, new,
            source=new.source_endpoint != current.source_endpoint,
            target=(new.target_endpoint, sample(new.source_repository, new.target_repository))
            != (current.target_endpoint, sample(current.source_repository,
                                                current.target_repository)),
        )

        def prepare() -> Callable[[int], int]:
            checks.check_graph(new, self._records())  # again: others may have been saved
            check_rule_keys(cp, self._keys)  # again: a key may have been deleted meanwhile
            return lambda seq: self._store.update(new, current.etag, seq)

        async with self._write_lock:
            try:
                await self._commit(prepare)
            except EtagMismatch as err:
                raise errors.aborted(
                    f"policy {p.id!r} changed during the update; read it again and retry"
                ) from err
            except PolicyMissing as err:
                raise errors.not_found(f"policy {p.id!r} was deleted") from err
            except NameTaken as err:
                raise errors.already_exists(f"a policy named {new.name!r} already exists") from err
            self._apply(cp)
        log.info("updated policy %s (%s) to version %d", new.id, new.name, version)
        return compiled.to_proto(cp)

    async def DeletePolicy(
        self, request: policy_pb2.DeletePolicyRequest, context: aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self._refresh()
        self._current(request.id)
        async with self._write_lock:
            try:
                await self._commit(
                    lambda: lambda seq: self._store.delete(request.id, request.etag, seq)
                )
            except EtagMismatch as err:
                raise errors.aborted(
                    f"policy {request.id!r} changed since it was read (etag {request.etag!r}); "
                    "read it again and retry"
                ) from err
            except PolicyMissing as err:
                raise errors.not_found(f"policy {request.id!r} not found") from err
            self._forget(request.id)
        log.info("deleted policy %s", request.id)
        return empty_pb2.Empty()

    async def ValidateRule(
        self, request: policy_pb2.ValidateRuleRequest, context: aio.ServicerContext
    ) -> policy_pb2.ValidateRuleResponse:
        self._rules.admit(context)
        out = policy_pb2.ValidateRuleResponse()
        try:
            rule = await self._rules.compile(request.rule)
        except RuleCompileError as err:
            for e in err.errors:
                out.errors.append(
                    policy_pb2.RuleError(
                        line=e.line,
                        column=e.column,
                        message=e.message,
                        offending_text=e.offending_text,
                        expected=list(e.expected),
                        suggestion=e.suggestion,
                    )
                )
        else:
            out.fields.extend(sorted(rule.fields))
            out.required_facts.extend(
                common_pb2.FactKind.ValueType(k) for k in sorted(rule.required_facts)
            )
        tz_problem = time_zone_error(request.time_zone)
        if tz_problem:
            out.template_errors.append(f"time_zone: {tz_problem}")
        template = None
        if request.tag_template or request.example_tag:
            try:
                template = compile_template(
                    request.tag_template, None if tz_problem else zone(request.time_zone)
                )
            except TemplateError as err:
                out.template_errors.append(f"tag_template: {compiled.template_error_text(err)}")
        if request.example_tag and template is not None and not out.template_errors:
            # The console's live preview: the tag a copy made now would get.
            try:
                out.tag_preview = template.render(
                    request.example_tag, datetime.now(UTC), zone(request.time_zone)
                )
            except TemplateError as err:
                out.template_errors.append(f"example_tag: {compiled.template_error_text(err)}")
        out.valid = not out.errors and not out.template_errors
        return out

    def _matching(self, endpoint: str, repository: str) -> list[CompiledPolicy]:
        """Enabled policies reading `endpoint` whose source names or matches `repository`,
        ordered by name."""
        ps = [
            p for i in self._index.match(endpoint, repository)
            if (p := self._policies.get(i)) is not None and p.record.enabled
        ]
        ps.sort(key=lambda p: p.record.name)
        return ps

    def _add_broken(
        self, endpoint: str, repository: str, out: policy_pb2.EvaluateResponse
    ) -> None:
        """A not-matched result for each enabled stored policy that no longer compiles."""
        for i in sorted(self._index.match(endpoint, repository) & self._broken.keys()):
            rec = self._broken[i]
            if rec.enabled:
                out.results.append(policy_pb2.PolicyResult(
                    policy_id=rec.id, policy_name=rec.name, matched=False,
                    target=common_pb2.Target(
                        endpoint=rec.target_endpoint, repository=rec.target_repository
                    ),
                    reason="the stored policy no longer compiles; update it (see the log)",
                ))

    async def Evaluate(
        self, request: policy_pb2.EvaluateRequest, context: aio.ServicerContext
    ) -> policy_pb2.EvaluateResponse:
        f = request.facts
        _require_endpoint(request.endpoint)
        if not f.repository:
            raise errors.invalid_argument(
                "facts.repository is required", [("facts.repository", "must not be empty")]
            )
        service = self._evaluations.admit(context)
        await self._refresh()
        when = (
            request.evaluation_time.ToDatetime(tzinfo=UTC)
            if request.HasField("evaluation_time")
            else datetime.now(UTC)
        )
        policies = self._matching(request.endpoint, f.repository)
        kinds = {k for p in policies for k in p.required}
        # Only the service's own verification counts: the caller's verified_by is dropped.
        verified = (
            await self._signatures.verify(f) if common_pb2.FACT_KIND_SIGNATURES in kinds else []
        )
        job = Job(
            f, kinds, verified, request.explain, when,
            self._max_vulnerability_age, time.time(), self._signatures.default_wait_us,
        )
        if work_of(f, len(policies)) <= INLINE_WORK:
            results = evaluate_all(policies, job)
        else:
            results = await self._evaluations.run(service, policies, job, context)
        out = policy_pb2.EvaluateResponse()
        matched = sum(r.matched for r in results)
        out.results.extend(results)  # one copy for the lot, cheaper than append per result
        if self._broken:
            self._add_broken(request.endpoint, f.repository, out)
        out.required_facts.extend(sorted(kinds))  # type: ignore[arg-type]
        if matched:
            _MATCHED.inc(matched)
        if len(policies) - matched:
            _NOT_MATCHED.inc(len(policies) - matched)
        return out

    async def EvaluateRule(
        self, request: policy_pb2.EvaluateRuleRequest, context: aio.ServicerContext
    ) -> policy_pb2.EvaluateRuleResponse:
        self._rules.admit(context)
        return await self._rules.run(_evaluate_rule, request)

    async def GetFactRequirements(
        self, request: policy_pb2.GetFactRequirementsRequest, context: aio.ServicerContext
    ) -> policy_pb2.FactRequirements:
        _require_endpoint(request.endpoint)
        if not request.repository:
            raise errors.invalid_argument(
                "repository is required", [("repository", "must not be empty")]
            )
        await self._refresh()
        policies = self._matching(request.endpoint, request.repository)
        kinds = sorted({k for p in policies for k in p.required})
        return policy_pb2.FactRequirements(
            repository=request.repository, kinds=kinds, policy_count=len(policies)  # type: ignore[arg-type]
        )
