"""Check a whole `apply -f` plan before any of it is carried out.

`mirrorctl apply` changes nothing unless every object passes, and `--dry-run` reports the same
problems (exit 4). The server does the checks it can: CreatePolicy with validate_only (rule,
template, target push permission, source/target conflicts, cycles) for new policies whose
endpoints exist, ValidateRule for the others; this side checks what only the whole file
shows: endpoints a policy names that will not exist, two endpoints with one registry URL, and
endpoints the plan deletes while a policy still uses them.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def _registry_key(url: str) -> str:
    """The registry a URL names, for spotting one registry under two endpoints."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{host}:{port}{parts.path.rstrip('/')}"


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
    final_eps: dict[str, str] = {
        n: e.url for n, e in server_eps.items() if ("endpoint", n) not in deleted
    }
    for d in desired.endpoints:
        if "url" in d.fields or d.msg.name not in final_eps:
            final_eps[d.msg.name] = d.msg.url
    problems += _endpoint_problems(desired, final_eps)

    final_pols: dict[str, policy_pb2.Policy] = {
        n: p for n, p in server_pols.items() if ("policy", n) not in deleted
    }
    for dp in desired.policies:
        merged = policy_pb2.Policy()
        if dp.msg.name in server_pols:
            merged.CopyFrom(server_pols[dp.msg.name])
        for f in dp.fields:
            if f in ("source", "target"):
                getattr(merged, f).CopyFrom(getattr(dp.msg, f))
            else:
                setattr(merged, f, getattr(dp.msg, f))
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


def _endpoint_problems(desired: Desired, final_eps: dict[str, str]) -> list[Problem]:
    problems = []
    for d in desired.endpoints:
        url = d.msg.url if ("url" in d.fields or d.msg.url) else final_eps.get(d.msg.name, "")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append(Problem("endpoint", d.msg.name,
                                    f"url {url!r} is not http(s)://HOST[:PORT]"))
    by_registry: dict[str, list[str]] = {}
    for name, url in final_eps.items():
        if url:
            by_registry.setdefault(_registry_key(url), []).append(name)
    declared = {d.msg.name for d in desired.endpoints}
    for names in by_registry.values():
        if len(names) > 1 and declared & set(names):
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
    if action == "create" and on_server:
        try:
            client.policies.create(policy, validate_only=True)
        except (errors.InvalidArgument, errors.FailedPrecondition, errors.AlreadyExists) as err:
            return [Problem("policy", name, _error_text(err))]
        return []
    # An update, or a policy on an endpoint the file creates: the server checks the rule and
    # the template (UpdatePolicy has no validate_only).
    resp = client.policies.validate_rule(
        policy.rule, tag_template=policy.tag_template, time_zone=policy.time_zone
    )
    out = [Problem("policy", name, f"rule:{e.line}:{e.column}: {e.message}")
           for e in resp.errors]
    out += [Problem("policy", name, f"tag template: {t}") for t in resp.template_errors]
    return out
