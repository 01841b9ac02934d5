"""Declarative state (`mirror.yaml`): parse it, compare it with the server, plan, apply, export.

Format (proto JSON field names, camelCase or snake_case):

    endpoints:
      - name: qa
        url: https://qa.example
        username: ci
        secretFrom: {env: QA_PASSWORD}     # or {file: qa-password.txt}; never inline
        webhookSecretFrom: {env: QA_HOOK_TOKEN}
    policies:
      - name: promote-stable
        source: {endpoint: dev, repository: team/website}
        rule: tag endswith "stable"
        target: {endpoint: qa, repository: qa/website}
        overwrite: never
        trigger: {schedule: {interval: 30s}}   # push (default), manual, or a cron schedule
        deletions: propagate
        copyReferrers: [signatures]

(the policy fields are those of `policydoc`). Only the fields a document names are compared
and changed; a field left out keeps the server's value. Secrets cannot be read back, so a
secret (and a webhook secret) is written when the endpoint is created, when the server holds
none, or when `--update-secrets` asks for it; otherwise an endpoint whose other fields match
is `unchanged`.

A policy or endpoint printed by `mirrorctl ... -o json` (or `-o yaml`) can be pasted as an
entry: output-only keys (id, etag, create/update times, active_since, disabled_reason,
required_facts, has_secret, has_webhook_secret) and null values are accepted and ignored.
`-f -` reads the document from stdin (JSON is YAML too).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from mirror import policyfields
from mirror.cli import policydoc, protodata
from mirror.cli.context import EXIT_INVALID, CliError
from mirror.client import Client
from mirror.enums import short_name
from mirror.v1 import policy_pb2, transfer_pb2

_TOP_KEYS = {"apiVersion", "kind", "endpoints", "policies"}
POLICY_MUTABLE = ("name", "description", "source", "rule", "target", "tag_template",
                  "time_zone", "enabled", "overwrite", "allow_incomplete_facts", "trigger",
                  "platforms", "keep_newest", "deletions", "copy_referrers", "signature_wait")
# Fields whose unset value means another: compared by what they mean.
_MEANS = {
    "overwrite": lambda p: p.overwrite or policy_pb2.OVERWRITE_ALWAYS,
    "deletions": lambda p: p.deletions or policy_pb2.DELETION_MODE_OFF,
    "trigger": lambda p: (policyfields.trigger_kind(p), policyfields.trigger_doc(p)),
    "signature_wait": lambda p: policyfields.duration_text(p.signature_wait),
    "platforms": lambda p: list(p.platforms),
    "copy_referrers": lambda p: list(p.copy_referrers),
}
# Printed by `endpoint show -o json`, set by the server: ignored in a file.
ENDPOINT_OUTPUT_ONLY = frozenset({"has_secret", "has_webhook_secret", "create_time",
                                  "update_time"})
_ENDPOINT_MUTABLE = ("url", "username", "ca_pem", "insecure_skip_verify", "max_concurrency",
                     "requests_per_second", "scan_on_push", "aliases")


@dataclass
class DesiredEndpoint:
    msg: transfer_pb2.Endpoint
    fields: set[str]
    secret: str | None = None
    webhook_secret: str | None = None


@dataclass
class DesiredPolicy:
    msg: policy_pb2.Policy
    fields: set[str]


@dataclass
class Desired:
    endpoints: list[DesiredEndpoint] = field(default_factory=list)
    policies: list[DesiredPolicy] = field(default_factory=list)


@dataclass
class Change:
    action: str  # create | update | delete | unchanged
    kind: str  # endpoint | policy
    name: str
    fields: list[str] = field(default_factory=list)
    run: Callable[[], object] | None = None
    # The same change asked of the server with validate_only (endpoints; policies are
    # checked by preflight, which sees the whole plan).
    check: Callable[[], object] | None = None

    def as_dict(self) -> dict[str, object]:
        return {"action": self.action, "kind": self.kind, "name": self.name,
                "fields": self.fields}


def _bad(source: str, message: str) -> CliError:
    return CliError(f"{source}: {message}", EXIT_INVALID)


def _from_key(inline: str) -> str:
    return "webhookSecretFrom" if inline.startswith("webhook") else "secretFrom"


def _given(doc: dict[str, Any], descriptor: Any) -> set[str]:
    out = set()
    for key in doc:
        f = descriptor.fields_by_camelcase_name.get(key) or descriptor.fields_by_name.get(key)
        if f is not None:
            out.add(f.name)
    return out


def _read_secret(ref: Any, where: str, base: Path) -> str:
    if not isinstance(ref, dict) or len(ref) != 1 or next(iter(ref)) not in ("env", "file"):
        raise _bad(where, "secretFrom must be {env: VARIABLE} or {file: PATH}")
    kind, value = next(iter(ref.items()))
    if kind == "env":
        secret = os.environ.get(str(value), "")
        if not secret:
            raise _bad(where, f"secretFrom env {value} is unset or empty")
        return secret
    path = base / str(value)
    try:
        secret = path.read_text().rstrip("\r\n")
    except OSError as err:
        raise _bad(where, f"secretFrom file {path}: {err.strerror}") from None
    if not secret:
        raise _bad(where, f"secretFrom file {path} is empty")
    return secret


def parse(text: str, source: str, base: Path) -> Desired:
    """Desired state from a YAML document; CliError (exit 4) naming the bad entry."""
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise _bad(source, f"not valid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise _bad(source, "expected a mapping with 'endpoints' and 'policies'")
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise _bad(source, f"unknown keys {sorted(unknown)}; expected endpoints, policies")
    out = Desired()
    seen: set[str] = set()
    for i, raw in enumerate(doc.get("endpoints") or []):
        where = f"{source}: endpoints[{i}]"
        if not isinstance(raw, dict):
            raise _bad(where, "expected a mapping")
        raw = dict(raw)
        for inline in ("secret", "webhookSecret", "webhook_secret"):
            if inline in raw:
                raise _bad(where, f"inline secrets are refused; use {_from_key(inline)}: "
                                  "{env: NAME} or {file: PATH}")
        ref = raw.pop("secretFrom", raw.pop("secret_from", None))
        hook_ref = raw.pop("webhookSecretFrom", raw.pop("webhook_secret_from", None))
        ca_file = raw.pop("caFile", raw.pop("ca_file", None))
        raw = policydoc.without_output_only(raw, transfer_pb2.Endpoint.DESCRIPTOR,
                                            ENDPOINT_OUTPUT_ONLY)
        try:
            msg = transfer_pb2.Endpoint()
            protodata.parse(raw, msg)
        except (json_format.ParseError, ValueError) as err:
            raise _bad(where, str(err)) from None
        fields = _given(raw, transfer_pb2.Endpoint.DESCRIPTOR) - {"name"}
        if ca_file is not None:
            try:
                msg.ca_pem = (base / str(ca_file)).read_text()
            except OSError as err:
                raise _bad(where, f"caFile {ca_file}: {err.strerror}") from None
            fields.add("ca_pem")
        if not msg.name:
            raise _bad(where, "name is required")
        if msg.name in seen:
            raise _bad(where, f"endpoint {msg.name!r} appears twice")
        seen.add(msg.name)
        secret = _read_secret(ref, where, base) if ref is not None else None
        hook = _read_secret(hook_ref, where, base) if hook_ref is not None else None
        out.endpoints.append(DesiredEndpoint(msg, fields, secret, hook))
    seen = set()
    for i, raw in enumerate(doc.get("policies") or []):
        where = f"{source}: policies[{i}]"
        # Output-only keys (id, etag, times...: a pasted `-o json`) are ignored by the reader.
        pmsg, pfields = policydoc.read(raw, where)
        if not pmsg.name:
            raise _bad(where, "name is required (policies are matched by name)")
        if pmsg.name in seen:
            raise _bad(where, f"policy {pmsg.name!r} appears twice")
        seen.add(pmsg.name)
        out.policies.append(DesiredPolicy(pmsg, pfields))
    return out


def load(path: str) -> Desired:
    """The desired state in the file at `path` (`-`: stdin; then a `secretFrom: {file: ...}`
    is relative to the current directory)."""
    if path == "-":
        return parse(sys.stdin.read(), "stdin", Path.cwd())
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror}") from None
    return parse(text, path, Path(path).resolve().parent)


def _differs(want: Any, have: Any, name: str) -> bool:
    if isinstance(want, policy_pb2.Policy) and name in _MEANS:
        return bool(_MEANS[name](want) != _MEANS[name](have))
    a, b = getattr(want, name), getattr(have, name)
    if hasattr(a, "ListFields") or name == "aliases":
        return list(a) != list(b) if name == "aliases" else a != b
    return a != b


def plan(
    client: Client, desired: Desired, *, prune: bool = False, update_secrets: bool = False
) -> list[Change]:
    """Compare `desired` with the server; each Change knows how to carry itself out."""
    changes: list[Change] = []
    current_eps = {e.name: e for e in client.transfers.iter_endpoints()}
    current_pols = {p.name: p for p in client.policies.iter()}
    tr, pol = client.transfers, client.policies

    for d in desired.endpoints:
        have = current_eps.get(d.msg.name)
        if have is None:
            msg = transfer_pb2.Endpoint()
            msg.CopyFrom(d.msg)
            if d.secret is not None:
                msg.secret = d.secret
            if d.webhook_secret is not None:
                msg.webhook_secret = d.webhook_secret
            changes.append(Change("create", "endpoint", d.msg.name, sorted(d.fields),
                                  partial(tr.create_endpoint, msg),
                                  partial(tr.create_endpoint, msg, validate_only=True)))
            continue
        diff = [f for f in _ENDPOINT_MUTABLE if f in d.fields and _differs(d.msg, have, f)]
        if d.secret is not None and (update_secrets or not have.has_secret):
            diff.append("secret")
        if d.webhook_secret is not None and (update_secrets or not have.has_webhook_secret):
            diff.append("webhook_secret")
        if not diff:
            changes.append(Change("unchanged", "endpoint", d.msg.name))
            continue
        kw: dict[str, Any] = {
            f: getattr(d.msg, f) for f in diff if f not in ("secret", "webhook_secret")
        }
        if "aliases" in kw:
            kw["aliases"] = list(kw["aliases"])
        if "secret" in diff:
            kw["secret"] = d.secret
        if "webhook_secret" in diff:
            kw["webhook_secret"] = d.webhook_secret
        changes.append(Change("update", "endpoint", d.msg.name, diff,
                              partial(tr.update_endpoint, d.msg.name, **kw),
                              partial(tr.update_endpoint, d.msg.name, validate_only=True, **kw)))

    for dp in desired.policies:
        cur = current_pols.get(dp.msg.name)
        if cur is None:
            pmsg = policy_pb2.Policy()
            pmsg.CopyFrom(dp.msg)
            if "enabled" not in dp.fields:
                pmsg.enabled = True
            changes.append(Change("create", "policy", dp.msg.name, sorted(dp.fields),
                                  partial(pol.create, pmsg)))
            continue
        diff = [f for f in POLICY_MUTABLE if f in dp.fields and _differs(dp.msg, cur, f)]
        if not diff:
            changes.append(Change("unchanged", "policy", dp.msg.name))
            continue
        pkw: dict[str, Any] = {
            f: getattr(dp.msg, f) for f in diff if f not in ("target", "source")
        }
        for f in ("platforms", "copy_referrers"):
            if f in pkw:
                pkw[f] = list(pkw[f])  # [] clears the list
        if "target" in diff:
            pkw["endpoint"] = dp.msg.target.endpoint
            pkw["repository"] = dp.msg.target.repository
        if "source" in diff:
            pkw["source_endpoint"] = dp.msg.source.endpoint
            pkw["source_repository"] = dp.msg.source.repository
        changes.append(Change("update", "policy", dp.msg.name, diff,
                              partial(pol.update, cur.id, etag=cur.etag, **pkw)))

    if prune:
        wanted = {d.msg.name for d in desired.policies}
        for name, p in sorted(current_pols.items()):
            if name not in wanted:
                changes.append(Change("delete", "policy", name, [],
                                      partial(pol.delete, p.id, etag=p.etag)))
        wanted = {d.msg.name for d in desired.endpoints}
        for name in sorted(current_eps):
            if name not in wanted:
                changes.append(Change("delete", "endpoint", name, [],
                                      partial(tr.delete_endpoint, name)))
    return changes


def export(client: Client) -> dict[str, Any]:
    """The server's endpoints and policies in the apply format; secrets as env references."""
    endpoints = []
    for e in client.transfers.iter_endpoints():
        d = json_format.MessageToDict(e)
        for k in ("createTime", "updateTime", "hasSecret", "secret", "hasWebhookSecret",
                  "webhookSecret"):
            d.pop(k, None)
        suffix = re.sub(r"[^A-Z0-9]", "_", e.name.upper())
        if e.has_secret:
            d["secretFrom"] = {"env": "MIRROR_SECRET_" + suffix}
        if e.has_webhook_secret:
            d["webhookSecretFrom"] = {"env": "MIRROR_WEBHOOK_SECRET_" + suffix}
        endpoints.append(d)
    return {"endpoints": endpoints, "policies": [policy_doc(p) for p in client.policies.iter()]}


def policy_doc(p: policy_pb2.Policy) -> dict[str, Any]:
    """A policy in the file shape: every field a file may set, enum values by short name."""
    d: dict[str, Any] = {"name": p.name}
    if p.description:
        d["description"] = p.description
    d["source"] = {"endpoint": p.source.endpoint, "repository": p.source.repository}
    d["rule"] = p.rule
    d["target"] = {"endpoint": p.target.endpoint, "repository": p.target.repository}
    d["tagTemplate"] = p.tag_template
    if p.time_zone:
        d["timeZone"] = p.time_zone
    d["enabled"] = p.enabled
    d["overwrite"] = short_name(policy_pb2.Overwrite.DESCRIPTOR,
                                p.overwrite or policy_pb2.OVERWRITE_ALWAYS)
    d["allowIncompleteFacts"] = p.allow_incomplete_facts
    d["trigger"] = policyfields.trigger_doc(p)
    d["platforms"] = list(p.platforms)
    d["keepNewest"] = p.keep_newest
    d["deletions"] = short_name(policy_pb2.DeletionMode.DESCRIPTOR, p.deletions)
    d["copyReferrers"] = list(p.copy_referrers)
    d["signatureWait"] = policyfields.duration_text(p.signature_wait)
    return d
