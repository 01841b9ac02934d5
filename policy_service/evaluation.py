"""Evaluate compiled policies against image facts: missing facts, rendered tags, explanations."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from datetime import datetime
from typing import Any

from mirror.v1 import common_pb2, policy_pb2

from policy_service.compiled import CompiledPolicy
from policy_service.rules import ComponentFact, Facts, VulnCounts
from policy_service.templates import TemplateError

# What each fact kind is called in a "needs ... facts" reason.
_KIND_NOUNS: dict[int, str] = {
    common_pb2.FACT_KIND_REFERENCE: "reference",
    common_pb2.FACT_KIND_MANIFEST: "manifest",
    common_pb2.FACT_KIND_COMPONENTS: "component",
    common_pb2.FACT_KIND_LICENSES: "license",
    common_pb2.FACT_KIND_VULNERABILITIES: "vulnerability",
}


_COMPONENT_KINDS = frozenset({common_pb2.FACT_KIND_COMPONENTS, common_pb2.FACT_KIND_LICENSES})


def facts_from_proto(f: common_pb2.ImageFacts, needed: Collection[int] | None = None) -> Facts:
    """The rule-language facts; components are converted only when `needed` (None: all
    kinds) includes components or licenses, as they are the costly part."""
    v = f.vulnerabilities
    with_components = needed is None or not _COMPONENT_KINDS.isdisjoint(needed)
    return Facts(
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


def missing_reason(missing: Iterable[int]) -> str:
    nouns = [_KIND_NOUNS.get(k, f"kind {k}") for k in missing]
    listed = nouns[0] if len(nouns) == 1 else ", ".join(nouns[:-1]) + " and " + nouns[-1]
    return f"needs {listed} facts, which were not provided"


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


def evaluate_policy(
    p: CompiledPolicy, facts: Facts, present: Collection[int] | None, explain: bool,
    when: datetime, rendered: dict[tuple[str, str], str | TemplateError] | None = None,
) -> policy_pb2.PolicyResult:
    """One policy's result: matched with the rendered tag, or not matched with a reason.

    `rendered` caches tags across the policies of one request: many share a template and zone.
    """
    matched, exp, reason = evaluate_rule(p.rule, p.required, facts, present, explain)
    tag = ""
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
    # Only set fields are passed: protobuf construction costs per keyword.
    fields: dict[str, Any] = {}
    if matched:
        fields["matched"] = True
        fields["tag"] = tag
    if exp is not None:
        fields["explanation"] = exp
    if reason:
        fields["reason"] = reason
    return policy_pb2.PolicyResult(
        policy_id=p.record.id, policy_name=p.record.name, target=p.target, **fields
    )
