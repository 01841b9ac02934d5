"""Evaluate compiled policies against image facts: missing facts, rendered tags, explanations."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from typing import Any

from mirror.v1 import common_pb2, policy_pb2

from policy_service import mapping
from policy_service.compiled import CompiledPolicy
from policy_service.freshness import FactQuality, missing_reason
from policy_service.rules import ComponentFact, Facts, VulnCounts
from policy_service.templates import TemplateError
from registry_client.names import repository_problem

_COMPONENT_KINDS = frozenset({common_pb2.FACT_KIND_COMPONENTS, common_pb2.FACT_KIND_LICENSES})
_FACTS_HAVE_SIGNATURES = "signatures" in {f.name for f in dataclasses.fields(Facts)}


def facts_from_proto(
    f: common_pb2.ImageFacts, needed: Collection[int] | None = None,
    signatures: Sequence[common_pb2.SignatureFact] | None = None,
) -> Facts:
    """The rule-language facts; components are converted only when `needed` (None: all
    kinds) includes components or licenses, as they are the costly part.

    `signatures`: the verified signatures (policy_service.signatures) to give the rule; None
    passes the request's as they are (EvaluateRule, whose caller states the facts).
    """
    v = f.vulnerabilities
    with_components = needed is None or not _COMPONENT_KINDS.isdisjoint(needed)
    extra: dict[str, Any] = {}
    if _FACTS_HAVE_SIGNATURES:
        extra["signatures"] = tuple(f.signatures if signatures is None else signatures)
    return Facts(
        **extra,
        repository=f.repository,
        tag=f.tag,
        digest=f.digest,
        components=tuple(
            ComponentFact(name=c.name, version=c.version, type=c.type, licenses=tuple(c.licenses))
            for c in f.components
        ) if with_components else (),
        vulns=VulnCounts(critical=v.critical, major=v.major, minor=v.minor, all=v.all),
        labels=dict(f.labels),
        platforms=tuple(f.platforms),
        size=f.size_bytes,
    )


def present_kinds(f: common_pb2.ImageFacts) -> frozenset[int] | None:
    """The fact kinds the caller gathered; None means all of them.

    Reference facts (repository, tag, digest) come with every request, so they always count
    as present.
    """
    if not f.present:
        return None
    return frozenset(f.present) | {common_pb2.FACT_KIND_REFERENCE}


def missing_kinds(required: Iterable[int], present: Collection[int] | None) -> list[int]:
    if present is None:
        return []
    return [k for k in required if k not in present]


def render_value(value: Any) -> str:
    """A clause's field value as text (already text from the rule language; JSON otherwise)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value  # the rule language renders clause values itself
    if isinstance(value, (list, tuple, set, frozenset)):
        return json.dumps(list(value), default=str)
    if isinstance(value, dict):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


def explanation_to_proto(exp: Any, missing: Iterable[int] = ()) -> policy_pb2.Explanation:
    return policy_pb2.Explanation(
        result=exp.result,
        clauses=[
            policy_pb2.ClauseResult(
                clause=c.clause,
                value=render_value(c.value),
                result=c.result,
                line=c.line,
                column=c.column,
            )
            for c in exp.clauses
        ],
        missing_facts=list(missing),  # type: ignore[arg-type]
    )


def evaluate_rule(
    rule: Any, required: Iterable[int], facts: Facts, present: Collection[int] | None,
    explain: bool,
) -> tuple[bool, policy_pb2.Explanation | None, str]:
    """(matched, explanation or None, reason). A rule short of facts does not match."""
    missing = missing_kinds(required, present)
    if missing:
        kinds = [common_pb2.FactKind.ValueType(k) for k in missing]
        exp = policy_pb2.Explanation(result=False, missing_facts=kinds) if explain else None
        return False, exp, missing_reason(missing)
    if explain:
        e = rule.explain(facts)
        return bool(e.result), explanation_to_proto(e), ""
    return bool(rule.evaluate(facts)), None, ""


def _target(p: CompiledPolicy, repository: str) -> tuple[common_pb2.Target, str]:
    """The rendered target for `repository`, and why it cannot be used ("" when it can)."""
    if not p.mapped:
        return p.target, ""
    rec = p.record
    name = mapping.render_for(rec.source_repository, rec.target_repository, repository)
    problem = repository_problem(name)
    target = common_pb2.Target(endpoint=rec.target_endpoint, repository=name)
    if problem:
        return target, (
            f"target repository {rec.target_repository!r} renders as {name!r} for "
            f"{repository!r}, which cannot be used: {problem}"
        )
    return target, ""


def evaluate_policy(
    p: CompiledPolicy, facts: Facts, present: Collection[int] | None, explain: bool,
    when: datetime, rendered: dict[tuple[str, str], str | TemplateError] | None = None,
    quality: FactQuality | None = None,
) -> policy_pb2.PolicyResult:
    """One policy's result: matched with the rendered tag and target; blocked (the facts
    cannot support the rule, see `freshness`); or not matched with a reason.

    `rendered` caches tags across the policies of one request: many share a template and zone.
    `quality` None evaluates whatever facts there are (as `allow_incomplete_facts` does).
    """
    # The common case (exact target, complete facts) is checked inline: this runs per policy.
    target, target_problem = _target(p, facts.repository) if p.mapped else (p.target, "")
    # Only set fields are passed: protobuf construction costs per keyword.
    fields: dict[str, Any] = dict(p.result_fields)
    if p.record.overwrite:
        fields["overwrite"] = p.record.overwrite
    if quality is not None and not quality.complete and not p.record.allow_incomplete_facts:
        why = quality.blocked_reason(p.required)
        if why:
            if explain:
                lacking = missing_kinds(p.required, present)
                fields["explanation"] = policy_pb2.Explanation(
                    result=False, missing_facts=lacking  # type: ignore[arg-type]
                )
            return policy_pb2.PolicyResult(
                policy_id=p.record.id, policy_name=p.record.name, target=target, blocked=True,
                reason=why, **fields,
            )
    matched, exp, reason = evaluate_rule(p.rule, p.required, facts, present, explain)
    tag = ""
    if matched and target_problem:
        matched, reason = False, target_problem
    if matched:
        key = (p.record.tag_template, p.record.time_zone)
        out = rendered.get(key) if rendered is not None else None
        if out is None:
            try:
                out = p.template.render(tag=facts.tag, when=when, tz=p.zone)
            except TemplateError as err:
                out = err
            if rendered is not None:
                rendered[key] = out
        if isinstance(out, TemplateError):
            matched = False
            reason = (
                f"tag template {p.record.tag_template!r} cannot be applied to "
                f"tag {facts.tag!r}: {out}"
            )
        else:
            tag = out
    if matched:
        fields["matched"] = True
        fields["tag"] = tag
    if exp is not None:
        fields["explanation"] = exp
    if reason:
        fields["reason"] = reason
    return policy_pb2.PolicyResult(
        policy_id=p.record.id, policy_name=p.record.name, target=target, **fields
    )
