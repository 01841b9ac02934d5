"""`mirrorctl policy ...`: mirroring policies, rule validation and explanation."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any

import yaml

from mirror import enums, errors, policyfields
from mirror.cli import cmd_pull, policydoc, policyflags, rule_errors
from mirror.cli.context import EXIT_INVALID, EXIT_NOT_FOUND, EXIT_SERVER, CliError, Context
from mirror.cli.output import const, enum_name, when
from mirror.cli.parsing import command, image_ref, location
from mirror.client import Client
from mirror.v1 import common_pb2, gateway_pb2, policy_pb2


def overwrite_name(p: policy_pb2.Policy) -> str:
    # UNSPECIFIED means ALWAYS (the proto says so): show what it does.
    return enum_name(policy_pb2.Overwrite, p.overwrite or policy_pb2.OVERWRITE_ALWAYS)


COLUMNS = [
    ("ID", lambda p: p.id),
    ("NAME", lambda p: p.name),
    ("SOURCE", lambda p: f"{p.source.endpoint}/{p.source.repository}"),
    ("TARGET", lambda p: f"{p.target.endpoint}/{p.target.repository}"),
    ("TAG", lambda p: p.tag_template),
    ("ENABLED", lambda p: p.enabled),
    ("RULE", lambda p: p.rule),
]
WIDE = [
    ("OVERWRITE", overwrite_name),
    ("INCOMPLETE FACTS", lambda p: "allowed" if p.allow_incomplete_facts else "block"),
    ("NEEDS FACTS", lambda p: _facts_names(p.required_facts)),
    ("ACTIVE SINCE", lambda p: when(p.active_since)),
    ("DISABLED REASON", lambda p: p.disabled_reason),
    ("TRIGGER", policyfields.trigger_text),
    ("PLATFORMS", lambda p: list(p.platforms) or "all"),
    ("KEEP NEWEST", lambda p: p.keep_newest or "all"),
    ("DELETIONS", lambda p: enum_name(policy_pb2.DeletionMode, p.deletions)),
    ("REFERRERS", lambda p: list(p.copy_referrers) or "none"),
]


def deletions_name(p: policy_pb2.Policy) -> str:
    return enum_name(policy_pb2.DeletionMode, p.deletions)


def poll_text(poll: gateway_pb2.Poll | None) -> str:
    """`<end time>: 12 listed, 2 changed, 2 copied, 0 failed` (empty: no poll yet)."""
    if poll is None or not poll.id:
        return ""
    done = when(poll.end_time) or f"{when(poll.start_time)} (running)"
    return (f"{done}: {poll.tags_listed} listed, {poll.tags_changed} changed, "
            f"{poll.tags_copied} copied, {poll.tags_failed} failed")


def _status_of(client: Client, policy_id: str) -> gateway_pb2.PolicyStatus | None:
    try:
        return client.gateway.get_policy_status(policy_id)
    except errors.MirrorError:
        return None  # the gateway may not run beside the policy service


def _poll_columns(statuses: dict[str, gateway_pb2.PolicyStatus | None]) -> list[Any]:
    def last(p: policy_pb2.Policy) -> str:
        st = statuses.get(p.id)
        return poll_text(st.last_poll) if st is not None and st.HasField("last_poll") else ""

    def nxt(p: policy_pb2.Policy) -> str:
        st = statuses.get(p.id)
        return when(st.next_poll_time) if st is not None else ""

    return [("LAST POLL", last), ("NEXT POLL", nxt)]


def _facts_names(kinds: Any) -> list[str]:
    return [enum_name(common_pb2.FactKind, k) for k in kinds]


def _fields(p: policy_pb2.Policy) -> list[tuple[str, object]]:
    return [
        ("id", p.id), ("name", p.name), ("description", p.description),
        ("source", f"{p.source.endpoint}/{p.source.repository}"), ("rule", p.rule),
        ("target", f"{p.target.endpoint}/{p.target.repository}"),
        ("tag template", p.tag_template), ("time zone", p.time_zone or "UTC"),
        ("overwrite", overwrite_name(p)),
        ("incomplete facts", "evaluated anyway" if p.allow_incomplete_facts else
         "block the run"),
        ("enabled", p.enabled), ("disabled reason", p.disabled_reason),
        ("active since", when(p.active_since)),
        ("needs facts", _facts_names(p.required_facts)),
        ("trigger", policyfields.trigger_text(p)),
        ("platforms", list(p.platforms) or "all"),
        ("keep newest", p.keep_newest or "all matching tags"),
        ("deletions", deletions_name(p)),
        ("copy referrers", list(p.copy_referrers) or "none"),
        ("signature wait", policyfields.duration_text(p.signature_wait)
         if p.HasField("signature_wait") and (p.signature_wait.seconds or
                                              p.signature_wait.nanos) else "server default"),
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


def load_policy_file(path: str) -> tuple[policy_pb2.Policy, set[str]]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        doc = yaml.safe_load(text)
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise CliError(f"{path} is not valid YAML: {err}", EXIT_INVALID) from None
    return policydoc.read(doc, path)


def _print_rule_failure(ctx: Context, err: errors.MirrorError, rule: str) -> None:
    positioned = rule_errors.from_error(err)
    if positioned:
        ctx.out.err.print(rule_errors.render(rule, positioned), highlight=False, markup=False)


def _policy_from_args(ctx: Context) -> policy_pb2.Policy:
    """The policy of `policy create`: the file's fields, overridden by the flags given."""
    a = ctx.args
    given: set[str] = set()
    if a.file:
        policy, given = load_policy_file(a.file)
    else:
        missing = [o for o, v in (("--name", a.name), ("--source", a.source), ("--rule", a.rule),
                                  ("--target", a.target)) if not v]
        if missing:
            raise CliError(f"missing {', '.join(missing)} (or give -f policy.yaml)")
        policy = policy_pb2.Policy()
    for flag, value, part in (("--source", a.source, policy.source),
                              ("--target", a.target, policy.target)):
        if value:
            where = location(value, what=flag)
            part.endpoint, part.repository = where.endpoint, where.repository
    for attr in ("name", "rule", "tag_template", "time_zone", "description",
                 "allow_incomplete_facts"):
        value = getattr(a, attr)
        if value is not None:
            setattr(policy, attr, value)
    if a.overwrite is not None:
        policy.overwrite = enums.value_of(  # type: ignore[assignment]
            policy_pb2.Overwrite.DESCRIPTOR, a.overwrite)
    policyflags.apply(a, policy)
    if not policy.source.endpoint:
        raise CliError(f"{a.file}: source: {{endpoint, repository}} is required", EXIT_INVALID,
                       hint="or give --source ENDPOINT/REPOSITORY")
    # New policies are enabled unless the file or --disabled says otherwise.
    if "enabled" not in given:
        policy.enabled = True
    if a.disabled:
        policy.enabled = False
    return policy


def create(ctx: Context) -> int:
    a = ctx.args
    if a.apply and (a.validate_only or a.disabled):
        raise CliError("--apply mirrors tags with the new policy: it needs the policy saved and "
                       "enabled (drop --validate-only / --disabled)")
    policy = _policy_from_args(ctx)
    if a.apply and not policy.enabled:
        raise CliError("--apply needs an enabled policy; the file says enabled: false")
    try:
        created = ctx.client.policies.create(policy, validate_only=a.validate_only)
    except errors.InvalidArgument as err:
        _print_rule_failure(ctx, err, policy.rule)
        raise
    if a.validate_only:
        ctx.out.message("policy is valid (nothing saved)")
        return 0
    if not a.apply:
        if ctx.out.machine:
            ctx.out.data(created)
        else:
            ctx.out.message(f"policy {created.name} created with id {created.id}; "
                            + _acts_on(created))
            if policyfields.trigger_kind(created) != "schedule":
                ctx.out.message(
                    f"mirror the tags already there with: mirrorctl policy apply {created.name}"
                )
        return 0
    # Save & Apply: the policy is saved whatever the apply call does.
    if not ctx.out.machine:
        ctx.out.message(f"policy {created.name} created with id {created.id}")
    try:
        applied = ctx.client.gateway.apply_policy(created.id)
    except errors.MirrorError:
        ctx.out.err.print(f"policy {created.name} was saved but not applied; retry with: "
                          f"mirrorctl policy apply {created.name}", highlight=False,
                          markup=False)
        raise
    if ctx.out.machine:
        ctx.out.data({"policy": created, "applied": applied})
        return EXIT_SERVER if applied.errors else 0
    return print_sweep(ctx, created.name, applied)


def _acts_on(p: policy_pb2.Policy) -> str:
    """What starts a newly saved policy, in words."""
    kind = policyfields.trigger_kind(p)
    if kind == "schedule":
        return (f"it polls {p.source.endpoint}/{p.source.repository} "
                f"({policyfields.trigger_text(p)}); the first poll mirrors what is there now")
    if kind == "manual":
        return f"only 'mirrorctl policy apply {p.name}' starts it"
    return "it acts on pushes from now on"


def print_sweep(
    ctx: Context, name: str,
    resp: gateway_pb2.ApplyPolicyResponse | gateway_pb2.ReconcileResponse,
) -> int:
    """An apply's or reconcile's summary, runs and per-endpoint errors (table format);
    exit 1 when some endpoint or repository could not be read."""
    from mirror.cli.cmd_runs import COLUMNS as RUN_COLUMNS
    from mirror.cli.cmd_runs import WIDE as RUN_WIDE

    if isinstance(resp, gateway_pb2.ApplyPolicyResponse):
        ctx.out.message(
            f"{name}: {resp.tags_evaluated} tags evaluated, {resp.tags_matched} matched, "
            f"{len(resp.runs)} runs started"
        )
    else:
        ctx.out.message(f"{name}: {resp.tags_checked} tags checked, {resp.runs_started} runs "
                        "started")
    if resp.runs:
        ctx.out.rows(list(resp.runs), RUN_COLUMNS, wide=RUN_WIDE)
    for e in resp.errors:
        where = "/".join(x for x in (e.endpoint, e.repository) if x)
        ctx.out.err.print(f"error: {where or 'sweep'}: {e.message}", highlight=False,
                          markup=False)
    if resp.errors:
        ctx.out.err.print("hint: the other endpoints were swept; check the failing one with: "
                          "mirrorctl endpoint test ENDPOINT", highlight=False, markup=False)
    return EXIT_SERVER if resp.errors else 0


def list_(ctx: Context) -> int:
    a = ctx.args
    src = location(a.source, what="--source") if a.source else None
    items = list(ctx.client.policies.iter(
        source_endpoint=src.endpoint if src else "",
        source_repository=src.repository if src else "", endpoint=a.endpoint or "",
    ))
    wide: list[Any] = list(WIDE)
    if ctx.out.fmt == "wide":
        # Last and next poll are the gateway's: one status call per policy, wide only.
        wide += _poll_columns({p.id: _status_of(ctx.client, p.id) for p in items})
    ctx.out.rows(items, COLUMNS, wide=wide,
                 empty="no policies; create one with: mirrorctl policy create")
    return 0


def show(ctx: Context) -> int:
    p = resolve(ctx.client, ctx.args.policy)
    if ctx.out.machine:
        ctx.out.data(p)
        return 0
    ctx.out.record(p, [(k, const(v)) for k, v in _fields(p)])
    st = _status_of(ctx.client, p.id)
    if st is None:
        return 0
    rows: list[Any] = [
        ("last run", lambda s: enum_name(type(s.last_run).State, s.last_state)
         if s.last_state else "never"),
        ("last message", lambda s: s.last_message),
        ("runs", lambda s: f"{s.runs_total} ({s.runs_succeeded} ok, {s.runs_failed} failed)"),
        ("baseline", lambda s: when(s.baseline_time)),
    ]
    if policyfields.trigger_kind(p) == "schedule":
        rows += [
            ("last poll", lambda s: poll_text(s.last_poll if s.HasField("last_poll") else None)
             or "none yet"),
            ("next poll", lambda s: when(s.next_poll_time)),
        ]
    ctx.out.record(st, rows)
    return 0


def _rule_text(ctx: Context) -> tuple[str, str]:
    a = ctx.args
    if a.file:
        try:
            text = sys.stdin.read() if a.file == "-" else Path(a.file).read_text()
        except OSError as err:
            raise CliError(f"cannot read {a.file}: {err.strerror}") from None
        if a.file.endswith((".yaml", ".yml")):
            policy, _ = policydoc.read(yaml.safe_load(text), a.file)
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
    facts = common_pb2.ImageFacts(
        repository=ref.repository, tag=ref.tag, digest=ref.digest,
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
    facts.components_unknown = report.components_unknown
    if report.HasField("vulnerability_data_time"):
        facts.vulnerability_data_time.CopyFrom(report.vulnerability_data_time)
    del facts.present[:]  # every kind gathered
    return facts


def _as_the_gateway_would(
    ctx: Context, policy: policy_pb2.Policy, facts: common_pb2.ImageFacts, image: str
) -> tuple[policy_pb2.PolicyResult | None, str]:
    """The policy's result as a push of `image` would get it (Evaluate: source scoping,
    fail-closed facts, the rendered target), and a note when it would not act at all."""
    if not policy.enabled:
        return None, f"policy {policy.name} is disabled: pushes do not trigger it"
    endpoint = image_ref(image, what="--image").endpoint
    resp = ctx.client.policies.evaluate(facts, endpoint=endpoint)
    mine = next((r for r in resp.results if r.policy_id == policy.id), None)
    if mine is None:
        return None, (f"policy {policy.name} reads {policy.source.endpoint}/"
                      f"{policy.source.repository}: a push of {image} does not trigger it")
    if mine.blocked:
        return mine, f"blocked: {mine.reason}"
    if mine.matched:
        return mine, (f"would copy to {mine.target.endpoint}/{mine.target.repository}:"
                      f"{mine.tag}")
    return mine, mine.reason


def explain(ctx: Context) -> int:
    a = ctx.args
    rule = a.rule_or_id
    policy: policy_pb2.Policy | None = None
    # Not a policy's id or name: the argument is the rule itself.
    with contextlib.suppress(CliError):
        policy = resolve(ctx.client, a.rule_or_id)
        rule = policy.rule
    facts = _facts_for(ctx, rule, a.image)
    resp = ctx.client.policies.evaluate_rule(rule, facts)
    result, note = (_as_the_gateway_would(ctx, policy, facts, a.image) if policy is not None
                    else (None, ""))
    # A policy passes only when a push would copy: its rule matches and nothing blocks it.
    passed = resp.matched and (policy is None or (result is not None and result.matched))
    if ctx.out.machine:
        ctx.out.data({"facts": facts, "result": resp, "policy_result": result, "note": note})
        return 0 if passed else 1
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
    if note:
        ctx.out.console.print(note, highlight=False, markup=False)
    return 0 if passed else 1


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
        return EXIT_SERVER if resp.errors else 0
    return print_sweep(ctx, p.name, resp)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    grp = command(sub, "policy", help="manage mirroring policies", common=common,
                  examples="  mirrorctl policy list\n  mirrorctl policy show promote-stable")
    s = grp.add_subparsers(title="commands", metavar="COMMAND")
    p = command(s, "create", help="create a policy from flags or a YAML file", func=create,
                common=common, examples=(
                    "  mirrorctl policy create --name promote-stable --source dev/team/website \\\n"
                    "      --rule 'tag endswith \"stable\"' --target qa/qa/website "
                    "--tag-template '%Y%m%d-%n'\n"
                    "  mirrorctl policy create --name mirror-team --source 'dev/team/**' \\\n"
                    "      --rule true --target 'qa/mirror/{path}' --overwrite never --apply\n"
                    "  mirrorctl policy create -f policy.yaml --apply   # Save & Apply\n"
                    "  mirrorctl policy create --name pull-nginx --source hub/library/nginx \\\n"
                    "      --rule 'tag semver \">=1.25 <2\"' --target qa/mirror/nginx "
                    "--schedule 30m --jitter 1m \\\n"
                    "      --platform linux/amd64 --keep-newest 3 --deletions propagate\n"
                    "  mirrorctl policy create --name signed --source dev/team/app \\\n"
                    "      --rule 'signed_by \"ci\"' --target qa/team/app --copy-referrers "
                    "signatures --signature-wait 10m\n"
                    "policy.yaml holds the Policy fields (camelCase or snake_case):\n"
                    "  name: promote-stable\n"
                    "  source: {endpoint: dev, repository: team/website}   # or a glob: team/**\n"
                    "  rule: tag endswith \"stable\" and critical_vulns == 0\n"
                    "  target: {endpoint: qa, repository: qa/website}      # may use {path}\n"
                    "  tagTemplate: \"%n\"\n  overwrite: never      # default always\n"
                    "  allowIncompleteFacts: false   # true: evaluate without vulnerability data\n"
                    "  enabled: true\n"
                    "  trigger: {schedule: {interval: 30s, jitter: 5s}}   # push (default), "
                    "manual, {schedule: {cron: '*/5 * * * *'}}\n"
                    "  platforms: [linux/amd64]\n  keepNewest: 3\n"
                    "  deletions: propagate      # off (default), dry_run\n"
                    "  copyReferrers: [signatures]   # attestations, sboms, all\n"
                    "  signatureWait: 10m\n"
                    "Save acts on pushes from now on; --apply also mirrors the matching tags "
                    "already there."))
    p.add_argument("-f", "--file", help="policy YAML (- for stdin); flags override its fields")
    p.add_argument("--name")
    p.add_argument("--source", metavar="ENDPOINT/REPOSITORY",
                   help="the endpoint the policy reads and a repository or glob in it "
                   "(dev/team/website, dev/team/**)")
    p.add_argument("--rule", help="rule in the policy language")
    p.add_argument("--target", metavar="ENDPOINT/REPOSITORY",
                   help="where matches are pushed; the repository may use {repository} and "
                   "{path} (the part the source glob matched)")
    p.add_argument("--overwrite", choices=enums.choices(policy_pb2.Overwrite.DESCRIPTOR),
                   help="a destination tag holding another digest: move it (always, the "
                   "default) or leave it alone (never)")
    p.add_argument("--allow-incomplete-facts", action=argparse.BooleanOptionalAction,
                   default=None, help="evaluate component, license and vulnerability clauses "
                   "even without (fresh) vulnerability data or a recognised package database "
                   "(default: such runs are blocked)")
    p.add_argument("--apply", action="store_true",
                   help="Save & Apply: also mirror the matching tags already in the source")
    p.add_argument("--tag-template", help="destination tag template (default %%n: same tag)")
    p.add_argument("--time-zone", help="IANA zone for the template's dates (default UTC)")
    p.add_argument("--description")
    p.add_argument("--disabled", action="store_true", help="create it disabled")
    p.add_argument("--validate-only", action="store_true",
                   help="check everything (including push permission) but save nothing")
    policyflags.add_arguments(p)
    p = command(s, "list", help="list policies", func=list_, common=common,
                examples="  mirrorctl policy list -o wide   # also trigger, settings, last and "
                "next poll\n"
                "  mirrorctl policy list --source dev/team/website -o json\n"
                "  mirrorctl policy list --endpoint qa   # reading or writing qa")
    p.add_argument("--source", metavar="ENDPOINT/REPOSITORY",
                   help="only policies reading this endpoint whose source matches this "
                   "repository")
    p.add_argument("--endpoint", help="only policies using this endpoint as source or target")
    p = command(s, "show", help="show a policy, its last run and (scheduled) its polls",
                func=show, common=common, aliases=("get",),
                examples="  mirrorctl policy show promote-stable\n"
                "  mirrorctl policy get ID -o yaml")
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
                    "first (needs an admin token);\nfor a policy it also says what a push of "
                    "the image would do (blocked, not its source, the copy);\n"
                    "exits 0 when it matches (a policy: and a push would copy), 1 when not"))
    p.add_argument("rule_or_id", metavar="RULE-or-ID", help="a rule, or a policy id or name")
    p.add_argument("--image", required=True, metavar="ENDPOINT/REPOSITORY:TAG")
    for name, fn, what in (("enable", enable, "enable"), ("disable", disable, "disable"),
                           ("rm", rm, "remove")):
        p = command(s, name, help=f"{what} a policy", func=fn, common=common,
                    examples=f"  mirrorctl policy {name} promote-stable")
        p.add_argument("policy", metavar="ID-or-NAME")
    p = command(s, "apply", help="mirror the matching tags already in the source repository",
                func=apply, common=common, examples=(
                    "  mirrorctl policy apply promote-stable\n"
                    "exits 1 when some endpoint or repository could not be read (listed; the "
                    "rest was applied)"))
    p.add_argument("policy", metavar="ID-or-NAME")
    cmd_pull.register(s, common)
