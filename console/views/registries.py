"""Registries (transfer-service endpoints): list, add, edit, Connect; secrets write-only."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from mirror import errors
from mirror.v1 import policy_pb2, transfer_pb2

from console.sessions import Session
from console.views.forms import FormError, endpoint_fields, endpoint_message, text
from console.web import console_of, form_of, page, render

# How many of the newest runs name the repositories a registry page lists.
RECENT_RUNS = 200

STEP_LABELS = {
    transfer_pb2.ConnectionCheck.STEP_REACHABLE: "Reachable",
    transfer_pb2.ConnectionCheck.STEP_TLS_VERIFIED: "TLS verified",
    transfer_pb2.ConnectionCheck.STEP_AUTHENTICATED: "Authenticated",
    transfer_pb2.ConnectionCheck.STEP_PULL_ALLOWED: "Pull allowed",
    transfer_pb2.ConnectionCheck.STEP_PUSH_ALLOWED: "Push allowed",
}
RESULT_LABELS = {
    transfer_pb2.ConnectionCheck.RESULT_OK: "ok",
    transfer_pb2.ConnectionCheck.RESULT_FAILED: "failed",
    transfer_pb2.ConnectionCheck.RESULT_SKIPPED: "skipped",
}


def connection_steps(resp: transfer_pb2.TestConnectionResponse) -> list[dict[str, str]]:
    """The five steps in order, each with its result (a step the server did not report is
    shown as skipped)."""
    by_step = {c.step: c for c in resp.checks}
    out = []
    for step, label in STEP_LABELS.items():
        check = by_step.get(step)
        result = RESULT_LABELS.get(check.result, "skipped") if check else "skipped"
        out.append({"label": label, "result": result, "message": check.message if check else ""})
    return out


async def endpoint_policies(session: Session, name: str) -> list[policy_pb2.Policy]:
    """Policies reading from or writing to this endpoint."""
    return [
        p async for p in session.client.policies.iter()
        if p.source.endpoint == name or p.target.endpoint == name
    ]


@page()
async def list_registries(request: web.Request, session: Session) -> web.StreamResponse:
    endpoints = [e async for e in session.client.transfers.iter_endpoints()]
    return render(request, "registries.html", session, endpoints=endpoints)


@page(write=True)
async def new_registry(request: web.Request, session: Session) -> web.StreamResponse:
    return render(request, "registry_form.html", session, endpoint=None, values={})


def _values(form: Any) -> dict[str, str]:
    """What to show again in a form that was refused: never a secret."""
    return {
        k: text(form, k) for k in form
        if k not in ("secret", "webhook_secret", "_csrf", "ca_file") and isinstance(form[k], str)
    }


@page(write=True)
async def create_registry(request: web.Request, session: Session) -> web.StreamResponse:
    form = await form_of(request)
    name = text(form, "name")
    try:
        fields = endpoint_fields(form)
        await session.client.transfers.create_endpoint(endpoint_message(name, fields))
    except (FormError, errors.InvalidArgument, errors.AlreadyExists) as err:
        return render(request, "registry_form.html", session, http_status=400, endpoint=None,
                      values=_values(form), error=err)
    raise web.HTTPSeeOther(f"/registries/{name}")


@page()
async def show_registry(request: web.Request, session: Session) -> web.StreamResponse:
    name = request.match_info["name"]
    endpoint = await session.client.transfers.get_endpoint(name)
    policies = await endpoint_policies(session, name)
    repos: set[str] = set()
    for p in policies:
        if p.source.endpoint == name and "*" not in p.source.repository:
            repos.add(p.source.repository)
        if p.target.endpoint == name and "{" not in p.target.repository:
            repos.add(p.target.repository)
    # And those recent runs read or wrote (a glob source, a mapped target).
    recent = await session.client.gateway.list_runs(page_size=RECENT_RUNS)
    for run in recent.runs:
        if run.source.endpoint == name:
            repos.add(run.source.repository)
        if run.destination.endpoint == name:
            repos.add(run.destination.repository)
    return render(request, "registry.html", session, endpoint=endpoint,
                  repositories=sorted(repos), policies=policies,
                  events_url=events_url(request, name))


def events_url(request: web.Request, name: str) -> str:
    """Where this registry's push notifications go (empty when the console does not know)."""
    base = console_of(request).cfg.events_base
    if base is None:
        return ""
    return f"{base or f'{request.scheme}://{request.host}'}/events/{name}"


@page(write=True)
async def edit_registry(request: web.Request, session: Session) -> web.StreamResponse:
    endpoint = await session.client.transfers.get_endpoint(request.match_info["name"])
    return render(request, "registry_form.html", session, endpoint=endpoint, values={})


@page(write=True)
async def update_registry(request: web.Request, session: Session) -> web.StreamResponse:
    name = request.match_info["name"]
    form = await form_of(request)
    endpoint = await session.client.transfers.get_endpoint(name)
    try:
        fields = endpoint_fields(form)
        await session.client.transfers.update_endpoint(name, **fields)
    except (FormError, errors.InvalidArgument) as err:
        return render(request, "registry_form.html", session, http_status=400, endpoint=endpoint,
                      values=_values(form), error=err)
    raise web.HTTPSeeOther(f"/registries/{name}")


@page(write=True)
async def connect(request: web.Request, session: Session) -> web.StreamResponse:
    """DTR's Connect: the five TestConnection steps (TestConnection needs an admin token)."""
    name = request.match_info["name"]
    form = await form_of(request)
    resp = await session.client.transfers.test_connection(
        name, repository=text(form, "repository"), check_push=text(form, "check_push") == "on"
    )
    return render(request, "_connect.html", session, ok=resp.ok, steps=connection_steps(resp))


@page(write=True)
async def confirm_delete(request: web.Request, session: Session) -> web.StreamResponse:
    name = request.match_info["name"]
    endpoint = await session.client.transfers.get_endpoint(name)
    return render(request, "registry_delete.html", session, endpoint=endpoint,
                  policies=await endpoint_policies(session, name))


@page(write=True)
async def delete_registry(request: web.Request, session: Session) -> web.StreamResponse:
    """DeleteEndpoint; the services refuse it while a policy uses the registry."""
    name = request.match_info["name"]
    try:
        await session.client.transfers.delete_endpoint(name)
    except errors.FailedPrecondition as err:
        endpoint = await session.client.transfers.get_endpoint(name)
        return render(request, "registry_delete.html", session, http_status=409,
                      endpoint=endpoint, policies=await endpoint_policies(session, name),
                      error=err)
    raise web.HTTPSeeOther("/registries")
