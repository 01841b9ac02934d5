"""The repository page (Mirrors tab), New mirror, and the live parts of its form."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from mirror import errors
from mirror.v1 import gateway_pb2, policy_pb2

from console.criteria import FIELDS, OPERATORS, CriteriaError, Criterion, rule_of
from console.policyform import policy_from_form, registry_name
from console.sessions import Session
from console.views import connect as connect_view
from console.views.forms import FormError, endpoint_fields, endpoint_message, text
from console.web import form_of, page, render

EXAMPLE_TAG = "1.4-stable"


def target_matches(policy: policy_pb2.Policy, endpoint: str, repository: str) -> bool:
    return policy.target.endpoint == endpoint and policy.target.repository == repository


async def with_status(session: Session, policies: list[policy_pb2.Policy]
                      ) -> list[tuple[policy_pb2.Policy, gateway_pb2.PolicyStatus | None]]:
    out = []
    for p in policies:
        try:
            status = await session.client.gateway.get_policy_status(p.id)
        except errors.NotFound:
            status = None
        out.append((p, status))
    return out


@page()
async def open_repository(request: web.Request, session: Session) -> web.StreamResponse:
    """The "Open a repository" form of a registry's page."""
    repo = request.query.get("r", "").strip().strip("/")
    endpoint = request.match_info["endpoint"]
    where = f"/repositories/{endpoint}/{repo}" if repo else f"/registries/{endpoint}"
    raise web.HTTPSeeOther(where)


@page()
async def repository(request: web.Request, session: Session) -> web.StreamResponse:
    """A repository of a registry; its Mirrors tab lists the policies in both directions."""
    endpoint = request.match_info["endpoint"]
    repo = request.match_info["repository"]
    await session.client.transfers.get_endpoint(endpoint)  # 404 for an unknown registry
    # The policy service matches the sources' globs: the console asks, it does not match.
    push = [p async for p in session.client.policies.iter(source_endpoint=endpoint,
                                                          source_repository=repo)]
    reading = {p.id for p in push}
    pull = [p async for p in session.client.policies.iter(endpoint=endpoint)
            if target_matches(p, endpoint, repo) and p.id not in reading]
    return render(
        request, "repository.html", session, endpoint=endpoint, repository=repo,
        push=await with_status(session, push), pull=await with_status(session, pull),
    )


def _criteria_rows(form: Any) -> list[Criterion]:
    getall = getattr(form, "getall", None)
    if getall is None:
        return []
    fields, ops, values = getall("c_field", []), getall("c_op", []), getall("c_value", [])
    rows = []
    for f, o, v in zip(fields, ops, values, strict=False):
        kind = FIELDS[f][2] if f in FIELDS else ""
        keys = [key for key, _, _ in OPERATORS.get(kind, [])]
        # A row whose attribute just changed may still carry the old attribute's operator.
        rows.append(Criterion(f, o if o in keys or not keys else keys[0], v))
    return rows


def _form_context(form: Any, endpoints: list[Any]) -> dict[str, Any]:
    rows = _criteria_rows(form) if form else [Criterion("tag", "endswith", "stable")]
    return {
        "values": {k: text(form, k) for k in form if isinstance(form[k], str)
                   and "secret" not in k and k != "_csrf"} if form else {},
        "rows": rows, "fields": FIELDS, "operators": OPERATORS,
        "endpoints": endpoints,
        "rule": text(form, "rule") if form else rule_of(rows),
    }


@page(write=True)
async def new_mirror(request: web.Request, session: Session) -> web.StreamResponse:
    endpoints = [e async for e in session.client.transfers.iter_endpoints()]
    ctx = _form_context(None, endpoints)
    ctx["values"] = {
        "endpoint": request.query.get("endpoint", ""),
        "repository": request.query.get("repository", ""),
        "direction": "push", "tag_mode": "keep", "overwrite": "always",
        # The remote registry: another one than this repository's, or a new one.
        "registry": next((e.name for e in endpoints if e.name != request.query.get("endpoint")),
                         "__new__"),
    }
    return render(request, "new_mirror.html", session, **ctx)


async def ensure_new_registry(session: Session, form: Any) -> str:
    """Register the "new registry" of the form (or update the one this form's Connect made)."""
    name = text(form, "new_name")
    fields = endpoint_fields(form, prefix="new_")
    if text(form, "created_endpoint") == name and name:
        await session.client.transfers.update_endpoint(name, **fields)
    else:
        await session.client.transfers.create_endpoint(endpoint_message(name, fields))
    return name


@page(write=True)
async def create_mirror(request: web.Request, session: Session) -> web.StreamResponse:
    form = await form_of(request)
    created = text(form, "created_endpoint")
    try:
        if text(form, "registry") == "__new__":
            created = await ensure_new_registry(session, form)
        policy = await session.client.policies.create(policy=policy_from_form(form))
    except (ValueError, errors.InvalidArgument, errors.AlreadyExists,
            errors.FailedPrecondition, errors.NotFound) as err:
        # ValueError: a FormError, or the SDK refusing a policy without a source endpoint.
        endpoints = [e async for e in session.client.transfers.iter_endpoints()]
        ctx = _form_context(form, endpoints)
        # The new registry was registered: the next Save updates it rather than adding it.
        ctx["values"]["created_endpoint"] = created
        return render(request, "new_mirror.html", session, http_status=400, error=err, **ctx)
    where = f"/policies/{policy.id}"
    if text(form, "action") == "apply":
        applied = await session.client.gateway.apply_policy(policy.id)
        where += f"?applied={applied.tags_matched}&evaluated={applied.tags_evaluated}"
    raise web.HTTPSeeOther(where)


@page(write=True)
async def connect_new_mirror(request: web.Request, session: Session) -> web.StreamResponse:
    """Connect in New mirror: registers a new registry first, then the five steps as they
    complete, with push permission checked on the remote repository when the mirror pushes
    to it."""
    form = await form_of(request)
    created = ""
    try:
        if text(form, "registry") == "__new__":
            created = await ensure_new_registry(session, form)
        name = registry_name(form)
        await session.client.transfers.get_endpoint(name)
    except (FormError, errors.InvalidArgument, errors.AlreadyExists, errors.NotFound) as err:
        return render(request, "_connect.html", session, error=err, created=created)
    return connect_view.start(request, session, connect_view.ConnectRequest(
        name, text(form, "remote_repository"), text(form, "direction") != "pull"
    ), created=created)


@page()
async def check_rule(request: web.Request, session: Session) -> web.StreamResponse:
    """The rule editor's live check: errors at their line and column (ValidateRule)."""
    form = await form_of(request)
    rule = str(form.get("rule", ""))
    resp = await session.client.policies.validate_rule(rule)
    lines = rule.split("\n")
    problems = [
        {"line": e.line, "column": e.column, "message": e.message,
         "suggestion": e.suggestion, "text": lines[e.line - 1] if 0 < e.line <= len(lines) else ""}
        for e in resp.errors
    ]
    return render(request, "_rule_check.html", session, valid=resp.valid, problems=problems,
                  fields_read=list(resp.fields))


@page()
async def build_rule(request: web.Request, session: Session) -> web.StreamResponse:
    """The criteria rows written as a rule (replaces the editor's text)."""
    form = await form_of(request)
    try:
        rule = rule_of(_criteria_rows(form), text(form, "join") or "and")
        error = ""
    except CriteriaError as err:
        rule, error = text(form, "rule"), str(err)
    return render(request, "_rule_editor.html", session, rule=rule, criteria_error=error)


@page()
async def criteria_row(request: web.Request, session: Session) -> web.StreamResponse:
    field = request.query.get("c_field", "tag")
    field = field if field in FIELDS else "tag"
    kind = FIELDS[field][2]
    return render(request, "_criterion.html", session, fields=FIELDS, operators=OPERATORS,
                  row=Criterion(field, OPERATORS[kind][0][0], ""))


@page()
async def tag_preview(request: web.Request, session: Session) -> web.StreamResponse:
    """The tag a template would make now for an example tag, and its errors: both from
    ValidateRule (the policy service renders it as a copy would)."""
    form = await form_of(request)
    template = "%n" if text(form, "tag_mode") != "template" else text(form, "tag_template")
    example = text(form, "example_tag") or EXAMPLE_TAG
    resp = await session.client.policies.validate_rule(
        "true", tag_template=template, time_zone=text(form, "time_zone"), example_tag=example
    )
    return render(request, "_tag_preview.html", session, preview=resp.tag_preview,
                  problems=list(resp.template_errors), example=example)
