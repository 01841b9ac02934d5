"""One reading of a policy written as YAML (`policy create -f` and `apply -f` share it).

    name: promote-stable
    source: {endpoint: dev, repository: "team/**"}
    rule: tag endswith "stable" and critical_vulns == 0
    target: {endpoint: qa, repository: "qa/{path}"}
    tagTemplate: "%n"
    overwrite: never              # or always (the default)
    allowIncompleteFacts: false   # true: evaluate even without vulnerability data
    trigger: push                 # or manual, {schedule: {interval: 30s, jitter: 5s}},
                                  # {schedule: {cron: "*/5 * * * *"}} (a pull mirror)
    platforms: [linux/amd64]      # only these platforms of an index (default all)
    keepNewest: 3                 # only the newest 3 matching tags (default 0: all)
    deletions: propagate          # or dry_run, off (the default)
    copyReferrers: [signatures]   # attestations, sboms, all (default none)
    signatureWait: 10m            # how long an unsigned image waits for a signature

Durations are written 30s, 10m, 1h30m or 500ms.

What `mirrorctl policy get NAME -o json` (or `-o yaml`) prints reads back as the same policy:
its output-only keys (id, etag, create_time, update_time, active_since, disabled_reason,
required_facts) are accepted and ignored, as are null values (a trigger's alternatives not
chosen, a schedule's unset interval or jitter). Unknown keys are refused.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from mirror import _build, policyfields
from mirror.cli import protodata
from mirror.cli.context import EXIT_INVALID, CliError
from mirror.v1 import policy_pb2

FIELDS_HINT = (
    "fields: name, description, source {endpoint, repository}, rule, target {endpoint, "
    "repository}, tagTemplate, timeZone, enabled, overwrite (always|never), "
    "allowIncompleteFacts, trigger (push|manual|{schedule: {interval|cron, jitter}}), "
    "platforms, keepNewest, deletions (off|propagate|dry_run), copyReferrers "
    "(signatures|attestations|sboms|all), signatureWait"
)
_LEGACY = ("sourceRepository", "source_repository")
# Fields written in people's forms (`trigger: manual`, `signatureWait: 10m`, a single
# platform): read here, not by the protobuf JSON parser.
_SETTINGS = ("trigger", "signature_wait", "platforms", "copy_referrers")
# Set by the server and printed by -o json/yaml: ignored when read back (like kubectl apply).
OUTPUT_ONLY = frozenset(
    f.name for f in policy_pb2.Policy.DESCRIPTOR.fields
    if f.name not in _build.POLICY_FIELDS and not f.GetOptions().deprecated
)


def without_output_only(doc: dict[str, Any], descriptor: Any, output_only: Any) -> dict[str, Any]:
    """`doc` without the keys (camelCase or snake_case) naming fields in `output_only`."""
    out = {}
    for key, value in doc.items():
        f = protodata.field_of(descriptor, key) if isinstance(key, str) else None
        if f is None or f.name not in output_only:
            out[key] = value
    return out


def legacy_source(doc: dict[str, Any], where: str) -> CliError | None:
    """The error for a document in the old shape (`sourceRepository`), naming the new field."""
    key = next((k for k in _LEGACY if k in doc), None)
    if key is None:
        return None
    repo = doc[key] if isinstance(doc[key], str) else "team/website"
    return CliError(
        f"{where}: {key} was replaced by source: {{endpoint, repository}}: a policy reads "
        "from one endpoint",
        EXIT_INVALID,
        hint=f"write: source: {{endpoint: ENDPOINT, repository: {repo}}} (ENDPOINT: the "
        "registry's name in 'mirrorctl endpoint list')",
    )


def read(doc: Any, where: str) -> tuple[policy_pb2.Policy, set[str]]:
    """The Policy a mapping describes, and the settable top-level fields it names (output-only
    keys are ignored); CliError (exit 4)."""
    if not isinstance(doc, dict):
        raise CliError(f"{where}: expected a mapping of policy fields", EXIT_INVALID)
    legacy = legacy_source(doc, where)
    if legacy is not None:
        raise legacy
    # A null is a field not given (apply keeps the server's value), as -o json prints unset.
    doc = {k: v for k, v in without_output_only(doc, policy_pb2.Policy.DESCRIPTOR,
                                                OUTPUT_ONLY).items() if v is not None}
    msg = policy_pb2.Policy()
    rest, settings = _split_settings(doc)
    try:
        protodata.parse(rest, msg)
    except (json_format.ParseError, ValueError) as err:
        raise CliError(f"{where}: {err}", EXIT_INVALID, hint=FIELDS_HINT) from None
    for (name, key), value in settings.items():
        try:
            _set_setting(msg, name, value)
        except ValueError as err:
            raise CliError(f"{where}: {key}: {err}", EXIT_INVALID, hint=FIELDS_HINT) from None
    names = {f.name for f, _ in msg.ListFields()}
    for key in doc:
        field = protodata.field_of(policy_pb2.Policy.DESCRIPTOR, key)
        if field is not None:
            names.add(field.name)
    return msg, names


def _split_settings(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[tuple[str, str], Any]]:
    """The document without the settings read by `_set_setting`, and those settings keyed by
    (field name, key as written); a null value is left out (the field keeps its default)."""
    rest: dict[str, Any] = {}
    settings: dict[tuple[str, str], Any] = {}
    for key, value in doc.items():
        field = protodata.field_of(policy_pb2.Policy.DESCRIPTOR, key) if isinstance(
            key, str) else None
        if field is not None and field.name in _SETTINGS:
            if value is not None:
                settings[(field.name, key)] = value
        else:
            rest[key] = value
    return rest, settings


def _set_setting(msg: policy_pb2.Policy, name: str, value: Any) -> None:
    if name == "trigger":
        msg.trigger.CopyFrom(policyfields.trigger(value))
    elif name == "signature_wait":
        msg.signature_wait.CopyFrom(policyfields.duration(value))
    else:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError("expected a list of strings")
        if name == "copy_referrers":
            items = policyfields.referrer_kinds(items)
        getattr(msg, name).extend(items)
