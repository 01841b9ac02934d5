"""`mirrorctl policy ...`: mirroring policies, rule validation and explanation."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from mirror import errors
from mirror.cli import rule_errors
from mirror.cli.context import EXIT_INVALID, EXIT_NOT_FOUND, CliError, Context
from mirror.cli.output import const, enum_name, when
from mirror.cli.parsing import command, image_ref
from mirror.client import Client
from mirror.v1 import common_pb2, policy_pb2

COLUMNS = [
    ("ID", lambda p: p.id),
    ("NAME", lambda p: p.name),
    ("SOURCE", lambda p: p.source_repository),
    ("TARGET", lambda p: f"{p.target.endpoint}/{p.target.repository}"),
    ("TAG", lambda p: p.tag_template),
    ("ENABLED", lambda p: p.enabled),
    ("RULE", lambda p: p.rule),
]


def _facts_names(kinds: Any) -> list[str]:
    return [enum_name(common_pb2.FactKind, k, "FACT_KIND_") for k in kinds]


def _fields(p: policy_pb2.Policy) -> list[tuple[str, object]]:
    return [
        ("id", p.id), ("name", p.name), ("description", p.description),
        ("source", p.source_repository), ("rule", p.rule),
        ("target", f"{p.target.endpoint}/{p.target.repository}"),
        ("tag template", p.tag_template), ("time zone", p.time_zone or "UTC"),
        ("enabled", p.enabled), ("needs facts", _facts_names(p.required_facts)),
        ("etag", p.etag), ("created", when(p.create_time)), ("updated", when(p.update_time)),
    ]


def resolve(client: Client, id_or_name: str) -> policy_pb2.Policy:
    """A policy by id, else by name; NotFound (exit 3) naming what was looked for."""
    try:
        return client.policies.get(id_or_name)
    except (errors.NotFound, errors.InvalidArgument):
        pass
    for p in client.policies.iter():
        if p.name == id_or_name:
            return p
    raise CliError(f"no policy has the id or name {id_or_name!r}", EXIT_NOT_FOUND,
                   hint="list them with: mirrorctl policy list")


def policy_from_document(doc: Any, source: str) -> tuple[policy_pb2.Policy, set[str]]:
    """A Policy from a YAML/JSON mapping (proto JSON names, camelCase or snake_case).

    Returns the message and the top-level fields the document set.
    """
    if not isinstance(doc, dict):
        raise CliError(f"{source}: expected a mapping of policy fields", EXIT_INVALID)
    try:
        msg = json_format.ParseDict(doc, policy_pb2.Policy())
    except json_format.ParseError as err:
        raise CliError(f"{source}: {err}", EXIT_INVALID,
                       hint="fields: name, description, sourceRepository, rule, "
                       "target {endpoint, repository}, tagTemplate, timeZone, enabled") from None
    names = {f.name for f, _ in msg.ListFields()}
    for key in doc:
        field = policy_pb2.Policy.DESCRIPTOR.fields_by_camelcase_name.get(key) or \
            policy_pb2.Policy.DESCRIPTOR.fields_by_name.get(key)
        if field is not None:
            names.add(field.name)
    return msg, names


def load_policy_file(path: str) -> tuple[policy_pb2.Policy, set[str]]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        doc = yaml.safe_load(text)
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise CliError(f"{path} is not valid YAML: {err}", EXIT_INVALID) from None
    return policy_from_document(doc, path)


def _print_rule_failure(ctx: Context, err: errors.MirrorError, rule: str) -> None:
    positioned = rule_errors.from_error(err)
    if positioned:
        ctx.out.err.print(rule_errors.render(rule, positioned), highlight=False, markup=False)


def create(ctx: Context) -> int:
    a = ctx.args
    given: set[str] = set()
    if a.file:
        policy, given = load_policy_file(a.file)
    else:
        missing = [o for o, v in (("--name", a.name), ("--source", a.source), ("--rule", a.rule),
                                  ("--target", a.target)) if not v]
        if missing:
            raise CliError(f"missing {', '.join(missing)} (or give -f policy.yaml)")
        policy = policy_pb2.Policy(name=a.name, source_repository=a.source, rule=a.rule)
    if a.target:
        t = image_ref(a.target, need_reference=False, what="--target")
        policy.target.endpoint, policy.target.repository = t.endpoint, t.repository
    for attr, field in (("name", "name"), ("source", "source_repository"), ("rule", "rule"),
                        ("tag_template", "tag_template"), ("time_zone", "time_zone"),
                        ("description", "description")):
        value = getattr(a, attr)
        if value is not None:
            setattr(policy, field, value)
    # New policies are enabled unless the file or --disabled says otherwise.
    if "enabled" not in given:
        policy.enabled = True
    if a.disabled:
        policy.enabled = False
    try:
        created = ctx.client.policies.create(policy, validate_only=a.validate_only)
    except errors.InvalidArgument as err:
        _print_rule_failure(ctx, err, policy.rule)
        raise
    if a.validate_only:
        ctx.out.message("policy is valid (nothing saved)")
        return 0
    if ctx.out.machine:
        ctx.out.data(created)
    else:
        ctx.out.message(f"policy {created.name} created with id {created.id}")
        ctx.out.message(
            f"mirror the tags already there with: mirrorctl policy apply {created.name}"
        )
    return 0


def list_(ctx: Context) -> int:
    items = list(ctx.client.policies.iter(source_repository=ctx.args.source or ""))
    ctx.out.rows(items, COLUMNS, empty="no policies; create one with: mirrorctl policy create")
    return 0


def show(ctx: Context) -> int:
    p = resolve(ctx.client, ctx.args.policy)
    if ctx.out.machine:
        ctx.out.data(p)
        return 0
    ctx.out.record(p, [(k, const(v)) for k, v in _fields(p)])
    try:
        st = ctx.client.gateway.get_policy_status(p.id)
    except errors.MirrorError:
        return 0  # the gateway may not run beside the policy service
    ctx.out.record(st, [
        ("last run", lambda s: enum_name(type(s.last_run).State, s.last_state)
         if s.last_state else "never"),
        ("last message", lambda s: s.last_message),
        ("runs", lambda s: f"{s.runs_total} ({s.runs_succeeded} ok, {s.runs_failed} failed)"),
    ])
    return 0


def _rule_text(ctx: Context) -> tuple[str, str]:
    a = ctx.args
    if a.file:
        try:
            text = sys.stdin.read() if a.file == "-" else Path(a.file).read_text()
        except OSError as err:
            raise CliError(f"cannot read {a.file}: {err.strerror}") from None
        if a.file.endswith((".yaml", ".yml")):
            policy, _ = policy_from_document(yaml.safe_load(text), a.file)
            return policy.rule, f"{a.file}: rule"
        return text, a.file
    if a.rule is None:
        raise CliError("give a RULE or -f FILE")
    return a.rule, "rule"


def validate(ctx: Context) -> int:
    rule, source = _rule_text(ctx)
    a = ctx.args
    resp = ctx.client.policies.validate_rule(
        rule, tag_template=a.tag_template or "", time_zone=a.time_zone or ""
    )
    if ctx.out.machine:
        ctx.out.data(resp)
    else:
        if resp.errors:
            ctx.out.console.print(
                rule_errors.render(rule, rule_errors.from_validate(resp), source),
                highlight=False, markup=False,
            )
        for t in resp.template_errors:
            ctx.out.console.print(f"tag template: {t}", highlight=False, markup=False)
        if resp.valid:
            ctx.out.console.print(
                f"valid; reads {', '.join(resp.fields) or 'nothing'}; needs facts: "
                f"{', '.join(_facts_names(resp.required_facts)) or 'none'}",
                highlight=False, markup=False,
            )
    return 0 if resp.valid else EXIT_INVALID


def _facts_for(ctx: Context, rule: str, image: str) -> common_pb2.ImageFacts:
    """Reference facts, or the scanner's facts when the rule needs more than the reference."""
    ref = image_ref(image, what="--image")
    check = ctx.client.policies.validate_rule(rule)
    if not check.valid:
        ctx.out.err.print(
            rule_errors.render(rule, rule_errors.from_validate(check)),
            highlight=False, markup=False,
        )
        raise CliError("the rule does not compile", EXIT_INVALID)
    needed = set(check.required_facts) - {common_pb2.FACT_KIND_REFERENCE,
                                          common_pb2.FACT_KIND_UNSPECIFIED}
    digest = ref.reference if ref.reference.startswith("sha256:") else ""
    facts = common_pb2.ImageFacts(
        repository=ref.repository, tag="" if digest else ref.reference, digest=digest,
        present=[common_pb2.FACT_KIND_REFERENCE],
    )
    if not needed:
        return facts
    report = ctx.client.scanner.scan_image(
        endpoint=ref.endpoint, repository=ref.repository, reference=ref.reference
    )
    facts.digest = report.digest or facts.digest
    facts.components.extend(report.components)
    facts.vulnerabilities.CopyFrom(report.counts)
    facts.labels.update(report.labels)
    facts.platforms.extend(report.platforms)
    facts.size_bytes = report.size_bytes
    del facts.present[:]  # every kind gathered
    return facts


def explain(ctx: Context) -> int:
    a = ctx.args
    rule = a.rule_or_id
    # Not a policy's id or name: the argument is the rule itself.
    with contextlib.suppress(CliError):
        rule = resolve(ctx.client, a.rule_or_id).rule
    facts = _facts_for(ctx, rule, a.image)
    resp = ctx.client.policies.evaluate_rule(rule, facts)
    if ctx.out.machine:
        ctx.out.data({"facts": facts, "result": resp})
        return 0 if resp.matched else 1
    ctx.out.rows(
        list(resp.explanation.clauses),
        [("LINE:COL", lambda c: f"{c.line}:{c.column}"), ("CLAUSE", lambda c: c.clause),
         ("VALUE", lambda c: c.value), ("RESULT", lambda c: c.result)],
        title=f"{a.image}: {'MATCHES' if resp.matched else 'does not match'}",
    )
    if resp.explanation.missing_facts:
        ctx.out.console.print(
            "missing facts: " + ", ".join(_facts_names(resp.explanation.missing_facts)),
            highlight=False,
        )
    return 0 if resp.matched else 1


def _set_enabled(ctx: Context, enabled: bool) -> int:
    p = resolve(ctx.client, ctx.args.policy)
    updated = ctx.client.policies.update(p.id, enabled=enabled, etag=p.etag)
    if ctx.out.machine:
        ctx.out.data(updated)
    else:
        ctx.out.message(f"policy {updated.name} {'enabled' if enabled else 'disabled'}")
    return 0


def enable(ctx: Context) -> int:
    return _set_enabled(ctx, True)


def disable(ctx: Context) -> int:
    return _set_enabled(ctx, False)


def rm(ctx: Context) -> int:
    p = resolve(ctx.client, ctx.args.policy)
    ctx.client.policies.delete(p.id, etag=p.etag)
    ctx.out.message(f"policy {p.name} ({p.id}) removed")
    return 0


def apply(ctx: Context) -> int:
    p = resolve(ctx.client, ctx.args.policy)
    resp = ctx.client.gateway.apply_policy(p.id)
    if ctx.out.machine:
        ctx.out.data(resp)
        return 0
    ctx.out.message(
        f"{p.name}: {resp.tags_evaluated} tags evaluated, {resp.tags_matched} matched, "
        f"{len(resp.runs)} runs started"
    )
    from mirror.cli.cmd_runs import COLUMNS as RUN_COLUMNS

    if resp.runs:
        ctx.out.rows(list(resp.runs), RUN_COLUMNS)
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    grp = command(sub, "policy", help="manage mirroring policies", common=common,
                  examples="  mirrorctl policy list\n  mirrorctl policy show promote-stable")
    s = grp.add_subparsers(title="commands", metavar="COMMAND")
    p = command(s, "create", help="create a policy from flags or a YAML file", func=create,
                common=common, examples=(
                    "  mirrorctl policy create --name promote-stable --source dev/website \\\n"
                    "      --rule 'tag endswith \"stable\"' --target qa/qa/website "
                    "--tag-template '%Y%m%d-%n'\n"
                    "  mirrorctl policy create -f policy.yaml\n"
                    "policy.yaml holds the Policy fields (camelCase or snake_case):\n"
                    "  name: promote-stable\n  sourceRepository: dev/website\n"
                    "  rule: tag endswith \"stable\" and critical_vulns == 0\n"
                    "  target: {endpoint: qa, repository: qa/website}\n"
                    "  tagTemplate: \"%n\"\n  enabled: true"))
    p.add_argument("-f", "--file", help="policy YAML (- for stdin); flags override its fields")
    p.add_argument("--name")
    p.add_argument("--source", help="source repository or glob (dev/website, dev/**)")
    p.add_argument("--rule", help="rule in the policy language")
    p.add_argument("--target", metavar="ENDPOINT/REPOSITORY", help="where matches are pushed")
    p.add_argument("--tag-template", help="destination tag template (default %%n: same tag)")
    p.add_argument("--time-zone", help="IANA zone for the template's dates (default UTC)")
    p.add_argument("--description")
    p.add_argument("--disabled", action="store_true", help="create it disabled")
    p.add_argument("--validate-only", action="store_true",
                   help="check everything (including push permission) but save nothing")
    p = command(s, "list", help="list policies", func=list_, common=common,
                examples="  mirrorctl policy list\n  mirrorctl policy list --source dev/website "
                "-o json")
    p.add_argument("--source", help="only policies whose source matches this repository")
    p = command(s, "show", help="show a policy and its last run", func=show, common=common,
                examples="  mirrorctl policy show promote-stable\n"
                "  mirrorctl policy show ID -o yaml")
    p.add_argument("policy", metavar="ID-or-NAME")
    p = command(s, "validate", help="check a rule; errors point at line and column",
                func=validate, common=common, examples=(
                    "  mirrorctl policy validate 'tag endswith \"stable\" and critical_vulns < 3'\n"
                    "  mirrorctl policy validate -f rule.txt\n"
                    "  mirrorctl policy validate -f policy.yaml --tag-template '%Y%m%d'\n"
                    "exits 4 when the rule has errors"))
    p.add_argument("rule", nargs="?", help="the rule (or -f FILE)")
    p.add_argument("-f", "--file", help="a rule file, or a policy YAML (its rule is checked)")
    p.add_argument("--tag-template")
    p.add_argument("--time-zone")
    p = command(s, "explain", help="evaluate a rule against a real image, clause by clause",
                func=explain, common=common, examples=(
                    "  mirrorctl policy explain promote-stable --image dev/dev/website:1.4-stable\n"
                    "  mirrorctl policy explain 'critical_vulns == 0' --image dev/app:2.0\n"
                    "rules that need components, licenses or vulnerabilities scan the image "
                    "first (needs an admin token);\nexits 0 when it matches, 1 when not"))
    p.add_argument("rule_or_id", metavar="RULE-or-ID", help="a rule, or a policy id or name")
    p.add_argument("--image", required=True, metavar="ENDPOINT/REPOSITORY:TAG")
    for name, fn, what in (("enable", enable, "enable"), ("disable", disable, "disable"),
                           ("rm", rm, "remove")):
        p = command(s, name, help=f"{what} a policy", func=fn, common=common,
                    examples=f"  mirrorctl policy {name} promote-stable")
        p.add_argument("policy", metavar="ID-or-NAME")
    p = command(s, "apply", help="mirror the matching tags already in the source repository",
                func=apply, common=common, examples="  mirrorctl policy apply promote-stable")
    p.add_argument("policy", metavar="ID-or-NAME")
