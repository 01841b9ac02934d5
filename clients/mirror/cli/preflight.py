"""Check a whole `apply -f` plan before any of it is carried out.

`mirrorctl apply` changes nothing unless every object passes, and `--dry-run` reports the same
problems (exit 4). The server does the checks it can: Create/UpdateEndpoint with validate_only
(name, URL, CA certificate, credentials) for each endpoint the plan writes, CreatePolicy with
validate_only (rule, template, target push permission, source/target conflicts, cycles) for
policies whose endpoints exist, ValidateRule for the others; this side checks what only the
whole file shows: endpoints a policy names that will not exist, two endpoints with one
registry URL (an endpoint the plan deletes or moves no longer counts), and endpoints the plan
deletes while a policy still uses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from mirror import errors
from mirror.cli.declarative import Change, Desired
from mirror.client import Client
from mirror.v1 import policy_pb2, transfer_pb2


@dataclass(frozen=True)
class Problem:
    kind: str  # endpoint | policy
    name: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "message": self.message}


def _registry_key(url_or_host: str, scheme: str = "") -> str:
    """host:port of a URL or an alias: one port serves one registry, whatever the scheme (the
    transfer service compares endpoints the same way)."""
    text = url_or_host.strip()
    parts = urlsplit(text if "://" in text else f"{scheme or 'https'}://{text}")
    host = (parts.hostname or "").lower()
    try:
        port = parts.port or (80 if parts.scheme == "http" else 443)
    except ValueError:
        return text
    return f"{host}:{port}"


def _error_text(err: errors.MirrorError) -> str:
    details = [f"{v.field}: {v.description}" for v in err.field_violations]
    details += [f"{p.subject}: {p.description}" if p.subject else p.description
                for p in err.precondition_violations]
    return "; ".join([err.message or err.code.name, *details])


def check(client: Client, desired: Desired, changes: list[Change]) -> list[Problem]:
    """Every problem the plan would run into; empty when it may be carried out."""
    problems: list[Problem] = []
    server_eps = {e.name: e for e in client.transfers.iter_endpoints()}
    server_pols = {p.name: p for p in client.policies.iter()}
    deleted = {(c.kind, c.name) for c in changes if c.action == "delete"}
    final_eps: dict[str, transfer_pb2.Endpoint] = {
        n: e for n, e in server_eps.items() if ("endpoint", n) not in deleted
    }
    for d in desired.endpoints:
        ep = transfer_pb2.Endpoint()
        if d.msg.name in final_eps:
            ep.CopyFrom(final_eps[d.msg.name])
        for f in d.fields:
            if f == "aliases":
                del ep.aliases[:]
                ep.aliases.extend(d.msg.aliases)
            else:
                setattr(ep, f, getattr(d.msg, f))
        ep.name = d.msg.name
        final_eps[d.msg.name] = ep
    problems += _server_endpoint_problems(changes)
    problems += _same_registry_problems(desired, final_eps)

    final_pols: dict[str, policy_pb2.Policy] = {
        n: p for n, p in server_pols.items() if ("policy", n) not in deleted
    }
    for dp in desired.policies:
        merged = policy_pb2.Policy()
        if dp.msg.name in server_pols:
            merged.CopyFrom(server_pols[dp.msg.name])
        for f in dp.fields:
            _copy_field(merged, dp.msg, f)
        final_pols[dp.msg.name] = merged

    for (kind, name) in sorted(deleted):
        if kind != "endpoint":
            continue
        users = sorted(n for n, p in final_pols.items()
                       if name in (p.source.endpoint, p.target.endpoint))
        if users:
            problems.append(Problem("endpoint", name, "cannot be deleted: used by policies "
                                    + ", ".join(users)))

    acting = {c.name: c.action for c in changes if c.kind == "policy"}
    for dp in desired.policies:
        action = acting.get(dp.msg.name)
        if action not in ("create", "update"):
            continue
        policy = final_pols[dp.msg.name]
        missing = [e for e in (policy.source.endpoint, policy.target.endpoint)
                   if e and e not in final_eps]
        if missing:
            problems.append(Problem("policy", dp.msg.name, "unknown endpoint(s) "
                                    + ", ".join(sorted(set(missing)))
                                    + ": neither on the server nor in the file"))
            continue
        problems += _policy_problems(client, policy, action, server_eps)
    return problems


def _copy_field(to: Any, src: Any, name: str) -> None:
    """Field `name` of Policy `src` copied onto `to` (a message or list field whole)."""
    field = policy_pb2.Policy.DESCRIPTOR.fields_by_name[name]
    if field.is_repeated:
        del getattr(to, name)[:]
        getattr(to, name).extend(getattr(src, name))
    elif field.message_type is not None:
        if src.HasField(name):
            getattr(to, name).CopyFrom(getattr(src, name))
        else:
            to.ClearField(name)
    else:
        setattr(to, name, getattr(src, name))


def _server_endpoint_problems(changes: list[Change]) -> list[Problem]:
    """Each endpoint the plan writes, checked by the transfer service (validate_only)."""
    problems = []
    for c in changes:
        if c.kind != "endpoint" or c.check is None:
            continue
        try:
            c.check()
        except errors.AlreadyExists:
            # Another endpoint for this registry: the whole plan decides (it may delete or
            # move that one), see _same_registry_problems.
            continue
        except (errors.InvalidArgument, errors.FailedPrecondition) as err:
            problems.append(Problem("endpoint", c.name, _error_text(err)))
    return problems


def _same_registry_problems(
    desired: Desired, final_eps: dict[str, transfer_pb2.Endpoint]
) -> list[Problem]:
    problems = []
    # One registry (host:port, by URL or alias) under two endpoints is refused by the server.
    by_registry: dict[str, set[str]] = {}
    for name, ep in final_eps.items():
        scheme = urlsplit(ep.url).scheme
        for where in [ep.url, *ep.aliases]:
            if where:
                by_registry.setdefault(_registry_key(where, scheme), set()).add(name)
    declared = {d.msg.name for d in desired.endpoints}
    for names in sorted(by_registry.values(), key=sorted):
        if len(names) > 1 and declared & names:
            problems.append(Problem("endpoint", sorted(names)[-1],
                                    "endpoints " + ", ".join(sorted(names)) + " name one "
                                    "registry; keep one and list other names as aliases"))
    return problems


def _policy_problems(
    client: Client, policy: policy_pb2.Policy, action: str,
    server_eps: dict[str, transfer_pb2.Endpoint],
) -> list[Problem]:
    name = policy.name
    on_server = all(e in server_eps for e in (policy.source.endpoint, policy.target.endpoint))
    if on_server:
        # An update is checked as the replacement of the policy (`policy.id` is set).
        try:
            client.policies.create(policy, validate_only=True)
        except (errors.InvalidArgument, errors.FailedPrecondition, errors.AlreadyExists) as err:
            return [Problem("policy", name, _error_text(err))]
        return []
    # A policy on an endpoint the file creates: the server checks the rule and the template
    # (the endpoint it names does not exist yet for a full check).
    resp = client.policies.validate_rule(
        policy.rule, tag_template=policy.tag_template, time_zone=policy.time_zone
    )
    out = [Problem("policy", name, f"rule:{e.line}:{e.column}: {e.message}")
           for e in resp.errors]
    out += [Problem("policy", name, f"tag template: {t}") for t in resp.template_errors]
    return out
