"""mirror.v1.PolicyService on grpc.aio: policy CRUD, rule validation and evaluation.

Every policy is compiled once per version (on start and on each write) and kept in memory
beside a source index, so Evaluate never parses a rule nor scans all policies.

UpdatePolicy masks: the mutable fields are name, description, source_repository, rule,
target (or target.endpoint / target.repository), tag_template, time_zone and enabled; an
empty mask (or "*") replaces all of them. A mask naming id, create_time, update_time, etag or
required_facts is refused with INVALID_ARGUMENT (they are immutable or output only); values
of those fields in the request body are ignored, except etag, which when set must be current.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from datetime import UTC, datetime

from google.protobuf import empty_pb2
from grpc import aio
from mirror.v1 import common_pb2, policy_pb2, policy_pb2_grpc

from policy_service import compiled, evaluation
from policy_service.compiled import CompiledPolicy
from policy_service.index import SourceIndex
from policy_service.push_check import PushChecker
from policy_service.rules import RuleCompileError, compile_rule
from policy_service.store import EtagMismatch, NameTaken, PolicyMissing, PolicyRecord, PolicyStore
from policy_service.templates import TemplateError, compile_template
from policy_service.validate import time_zone_error, zone
from servicekit import errors, metrics, paging

log = logging.getLogger("policy_service")

SERVICE_NAME = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name

_MUTABLE_PATHS = {
    "name", "description", "source_repository", "rule", "target", "target.endpoint",
    "target.repository", "tag_template", "time_zone", "enabled",
}
_FIXED_PATHS = {"id", "create_time", "update_time", "etag", "required_facts"}
_MATCHED = metrics.EVALUATIONS.labels(matched="true")
_NOT_MATCHED = metrics.EVALUATIONS.labels(matched="false")


def _now_us() -> int:
    return time.time_ns() // 1000


def _new_etag(version: int) -> str:
    return f"{version}-{secrets.token_hex(4)}"


def _fields_from(p: policy_pb2.Policy, paths: set[str]) -> dict[str, object]:
    """The record fields named by mask `paths`, with values taken from `p`."""
    out: dict[str, object] = {}
    for name in ("name", "description", "source_repository", "rule", "time_zone", "enabled"):
        if name in paths:
            out[name] = getattr(p, name)
    if "tag_template" in paths:
        out["tag_template"] = p.tag_template or compiled.DEFAULT_TAG_TEMPLATE
    if "target" in paths or "target.endpoint" in paths:
        out["target_endpoint"] = p.target.endpoint
    if "target" in paths or "target.repository" in paths:
        out["target_repository"] = p.target.repository
    return out


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


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):
    """The policy service; `push_checker` None skips the target push check (standalone use)."""

    service_name = SERVICE_NAME

    def __init__(self, store: PolicyStore, push_checker: PushChecker | None) -> None:
        self._store = store
        self._push = push_checker
        self._policies: dict[str, CompiledPolicy] = {}
        # Stored policies that no longer compile: listed, never evaluated.
        self._broken: dict[str, PolicyRecord] = {}
        self._index = SourceIndex()
        # Serializes store writes with their in-memory effect, so memory follows commit order.
        self._write_lock = asyncio.Lock()
        self._load()

    def mount(self, server: aio.Server) -> None:
        policy_pb2_grpc.add_PolicyServiceServicer_to_server(self, server)

    def _load(self) -> None:
        for rec in self._store.all():
            try:
                self._apply(compiled.compile_policy(rec))
            except errors.ApiError as err:
                log.error("policy %s (%s) no longer compiles: %s", rec.id, rec.name, err.message)
                self._broken[rec.id] = rec
                self._index.put(rec.id, rec.source_repository)
        log.info("loaded %d policies", len(self._policies))

    def _apply(self, p: CompiledPolicy) -> None:
        self._policies[p.record.id] = p
        self._broken.pop(p.record.id, None)
        self._index.put(p.record.id, p.record.source_repository)

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

    async def _check_target(self, endpoint: str, repository: str) -> None:
        if self._push is not None:
            await self._push.check(endpoint, repository)

    async def CreatePolicy(
        self, request: policy_pb2.CreatePolicyRequest, context: aio.ServicerContext
    ) -> policy_pb2.Policy:
        p = request.policy
        now = _now_us()
        rec = PolicyRecord(
            id="" if request.validate_only else secrets.token_hex(8),
            name=p.name,
            description=p.description,
            source_repository=p.source_repository,
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
        )
        cp = compiled.compile_policy(rec)
        if self._store.name_exists(rec.name):
            raise errors.already_exists(f"a policy named {rec.name!r} already exists")
        await self._check_target(rec.target_endpoint, rec.target_repository)
        if request.validate_only:
            return compiled.to_proto(cp)
        async with self._write_lock:
            try:
                await asyncio.to_thread(self._store.insert, rec)
            except NameTaken as err:
                raise errors.already_exists(f"a policy named {rec.name!r} already exists") from err
            self._apply(cp)
        log.info("created policy %s (%s)", rec.id, rec.name)
        return compiled.to_proto(cp)

    async def GetPolicy(
        self, request: policy_pb2.GetPolicyRequest, context: aio.ServicerContext
    ) -> policy_pb2.Policy:
        self._current(request.id)
        out = self._proto(request.id)
        assert out is not None
        return out

    async def ListPolicies(
        self, request: policy_pb2.ListPoliciesRequest, context: aio.ServicerContext
    ) -> policy_pb2.ListPoliciesResponse:
        size = paging.page_size(request.page_size)
        source = request.source_repository
        state = paging.decode_token(request.page_token, expect={"source_repository": source})
        after = str(state.get("after", ""))
        only = self._index.match(source) if source else None
        recs = self._store.page(after, size + 1, only)
        more = len(recs) > size
        recs = recs[:size]
        out = policy_pb2.ListPoliciesResponse()
        for rec in recs:
            p = self._policies.get(rec.id)
            out.policies.append(compiled.record_to_proto(rec, p.required if p else ()))
        if more:
            out.next_page_token = paging.encode_token(
                {"source_repository": source, "after": recs[-1].name}
            )
        return out

    async def UpdatePolicy(
        self, request: policy_pb2.UpdatePolicyRequest, context: aio.ServicerContext
    ) -> policy_pb2.Policy:
        p = request.policy
        paths = _mask_paths(list(request.update_mask.paths))
        current = self._current(p.id)
        if p.etag and p.etag != current.etag:
            raise errors.aborted(
                f"policy {p.id!r} changed since it was read (etag {p.etag!r}, now "
                f"{current.etag!r}); read it again and retry"
            )
        version = current.version + 1
        new = current.evolve(
            **_fields_from(p, paths),
            update_time_us=max(_now_us(), current.update_time_us + 1),
            etag=_new_etag(version),
            version=version,
        )
        cp = compiled.compile_policy(new)
        if new.name != current.name and self._store.name_exists(new.name, except_id=new.id):
            raise errors.already_exists(f"a policy named {new.name!r} already exists")
        if (new.target_endpoint, new.target_repository) != (
            current.target_endpoint, current.target_repository
        ):
            await self._check_target(new.target_endpoint, new.target_repository)
        async with self._write_lock:
            try:
                await asyncio.to_thread(self._store.update, new, current.etag)
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
        self._current(request.id)
        async with self._write_lock:
            try:
                await asyncio.to_thread(self._store.delete, request.id, request.etag)
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
        out = policy_pb2.ValidateRuleResponse()
        try:
            rule = compile_rule(request.rule)
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
        if request.tag_template:
            try:
                compile_template(
                    request.tag_template, None if tz_problem else zone(request.time_zone)
                )
            except TemplateError as err:
                out.template_errors.append(f"tag_template: {compiled.template_error_text(err)}")
        out.valid = not out.errors and not out.template_errors
        return out

    def _matching(self, repository: str) -> list[CompiledPolicy]:
        """Enabled policies whose source names or matches `repository`, ordered by name."""
        ps = [
            p for i in self._index.match(repository)
            if (p := self._policies.get(i)) is not None and p.record.enabled
        ]
        ps.sort(key=lambda p: p.record.name)
        return ps

    def _add_broken(self, repository: str, out: policy_pb2.EvaluateResponse) -> None:
        """A not-matched result for each enabled stored policy that no longer compiles."""
        for i in sorted(self._index.match(repository) & self._broken.keys()):
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
        if not f.repository:
            raise errors.invalid_argument(
                "facts.repository is required", [("facts.repository", "must not be empty")]
            )
        when = (
            request.evaluation_time.ToDatetime(tzinfo=UTC)
            if request.HasField("evaluation_time")
            else datetime.now(UTC)
        )
        policies = self._matching(f.repository)
        kinds = {k for p in policies for k in p.required}
        facts = evaluation.facts_from_proto(f, kinds)
        present = evaluation.present_kinds(f)
        out = policy_pb2.EvaluateResponse()
        rendered: dict[tuple[str, str], str | TemplateError] = {}
        results = [
            evaluation.evaluate_policy(p, facts, present, request.explain, when, rendered)
            for p in policies
        ]
        matched = sum(r.matched for r in results)
        out.results.extend(results)  # one copy for the lot, cheaper than append per result
        if self._broken:
            self._add_broken(f.repository, out)
        out.required_facts.extend(sorted(kinds))  # type: ignore[arg-type]
        if matched:
            _MATCHED.inc(matched)
        if len(policies) - matched:
            _NOT_MATCHED.inc(len(policies) - matched)
        return out

    async def EvaluateRule(
        self, request: policy_pb2.EvaluateRuleRequest, context: aio.ServicerContext
    ) -> policy_pb2.EvaluateRuleResponse:
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

    async def GetFactRequirements(
        self, request: policy_pb2.GetFactRequirementsRequest, context: aio.ServicerContext
    ) -> policy_pb2.FactRequirements:
        if not request.repository:
            raise errors.invalid_argument(
                "repository is required", [("repository", "must not be empty")]
            )
        policies = self._matching(request.repository)
        kinds = sorted({k for p in policies for k in p.required})
        return policy_pb2.FactRequirements(
            repository=request.repository, kinds=kinds, policy_count=len(policies)  # type: ignore[arg-type]
        )
