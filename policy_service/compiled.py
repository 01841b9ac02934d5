"""A policy compiled once per version: its rule, template and zone, ready to evaluate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from google.protobuf import timestamp_pb2
from mirror.v1 import common_pb2, policy_pb2

from policy_service import mapping, settings, validate
from policy_service.rules import RuleCompileError, compile_rule
from policy_service.store import PolicyRecord
from policy_service.templates import TemplateError, compile_template
from servicekit import errors

DEFAULT_TAG_TEMPLATE = "%n"


@dataclass(frozen=True)
class CompiledPolicy:
    """A stored policy with everything Evaluate needs, built once when the policy changes."""

    record: PolicyRecord
    rule: Any
    template: Any
    zone: ZoneInfo
    # Proto FactKind values, sorted.
    required: tuple[int, ...]
    # The target as stored; when `mapped` its repository holds placeholders to render.
    target: common_pb2.Target
    mapped: bool = False
    # PolicyResult keywords of the copy settings (platforms, copy_referrers, trigger).
    result_fields: dict[str, Any] = field(default_factory=dict)


def rule_error_text(err: Any) -> str:
    """`line L, column C: message; did you mean 'x'?` for one RuleErrorInfo."""
    text = f"line {err.line}, column {err.column}: {err.message}"
    if err.suggestion and "did you mean" not in err.message:
        text += f"; did you mean {err.suggestion!r}?"
    return text


def template_error_text(err: TemplateError) -> str:
    return str(err)


def check_rule(rule: str, field: str) -> tuple[Any, list[tuple[str, str]]]:
    """The compiled rule, or None and one violation per compile error."""
    try:
        return compile_rule(rule), []
    except RuleCompileError as err:
        return None, [(field, rule_error_text(e)) for e in err.errors]


def compile_policy(
    rec: PolicyRecord, prefix: str = "policy.", strict: bool = True
) -> CompiledPolicy:
    """Validate every field of `rec` and compile it; INVALID_ARGUMENT listing every problem.

    `strict` False (loading what an older version stored) accepts a policy with no source
    endpoint yet and a glob source mapped onto one repository; the start-up migration and
    the save checks deal with those.
    """
    violations: list[tuple[str, str]] = []

    def check(field: str, problem: str | None) -> None:
        if problem:
            violations.append((prefix + field, problem))

    check("name", validate.name_error(rec.name))
    if strict or rec.source_endpoint:
        check("source.endpoint", validate.endpoint_error(rec.source_endpoint))
    source_problem = validate.source_error(rec.source_repository)
    check("source.repository", source_problem)
    check("target.endpoint", validate.endpoint_error(rec.target_endpoint))
    check(
        "target.repository",
        mapping.target_error(rec.source_repository, rec.target_repository, fan_in=not strict)
        if not source_problem else validate.repository_error(
            mapping.render(rec.target_repository, "a", "a")
        ),
    )
    if rec.overwrite not in policy_pb2.Overwrite.values():
        check("overwrite", f"unknown value {rec.overwrite}; use OVERWRITE_ALWAYS or _NEVER")
    for where, problem in settings.problems(rec):
        check(where, problem)
    tz_problem = validate.time_zone_error(rec.time_zone)
    check("time_zone", tz_problem)
    rule, rule_problems = check_rule(rec.rule, prefix + "rule")
    violations += rule_problems
    template = None
    try:
        # With the zone, %Z is checked to render tag-safe there.
        template = compile_template(
            rec.tag_template, None if tz_problem else validate.zone(rec.time_zone)
        )
    except TemplateError as err:
        check("tag_template", template_error_text(err))
    if violations:
        summary = "; ".join(f"{f.removeprefix(prefix)}: {d}" for f, d in violations)
        raise errors.invalid_argument(f"invalid policy: {summary}", violations)
    return CompiledPolicy(
        record=rec,
        rule=rule,
        template=template,
        zone=validate.zone(rec.time_zone),
        required=tuple(sorted(int(k) for k in rule.required_facts)),
        target=common_pb2.Target(endpoint=rec.target_endpoint, repository=rec.target_repository),
        mapped=bool(mapping.placeholders(rec.target_repository)),
        result_fields=settings.result_fields(rec),
    )


def _timestamp(us: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMicroseconds(us)
    return ts


def to_proto(p: CompiledPolicy) -> policy_pb2.Policy:
    return record_to_proto(p.record, p.required)


def record_to_proto(r: PolicyRecord, required: tuple[int, ...] = ()) -> policy_pb2.Policy:
    """The API form of a stored policy (`required` from its compiled rule); the deprecated
    source_repository is never set."""
    return policy_pb2.Policy(
        id=r.id,
        name=r.name,
        description=r.description,
        source=policy_pb2.PolicySource(endpoint=r.source_endpoint, repository=r.source_repository),
        rule=r.rule,
        target=common_pb2.Target(endpoint=r.target_endpoint, repository=r.target_repository),
        tag_template=r.tag_template,
        time_zone=r.time_zone,
        enabled=r.enabled,
        create_time=_timestamp(r.create_time_us) if r.create_time_us else None,
        update_time=_timestamp(r.update_time_us) if r.update_time_us else None,
        etag=r.etag,
        required_facts=required,  # type: ignore[arg-type]
        overwrite=r.overwrite,  # type: ignore[arg-type]
        allow_incomplete_facts=r.allow_incomplete_facts,
        active_since=_timestamp(r.active_since_us) if r.active_since_us else None,
        disabled_reason=r.disabled_reason,
        **settings.proto_fields(r),
    )
