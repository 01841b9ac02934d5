"""Registries (transfer-service endpoints): list, add, edit, Connect; secrets write-only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from mirror import errors
from mirror.v1 import policy_pb2

from console.sessions import Session
from console.views import connect as connect_view
from console.views.forms import FormError, endpoint_fields, endpoint_message, text
from console.web import console_of, form_of, page, render

# How many of the newest runs name the repositories a registry page lists.
RECENT_RUNS = 200

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


async def mirrored_repositories(session: Session, name: str,
                                policies: list[policy_pb2.Policy]) -> set[str]:
    """The repositories of this registry that its mirrors and their recent runs name."""
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
    return repos


@dataclass
class Catalog:
    """One page of the registry's own catalog, or why the registry would not list it."""

    names: list[str] = field(default_factory=list)
    next_token: str = ""
    error: str = ""


async def catalog_page(session: Session, name: str, page_size: int, prefix: str,
                       token: str) -> Catalog:
    try:
        page_ = await session.client.transfers.list_repositories(
            name, page_size=page_size, page_token=token, prefix=prefix
        )
    except (errors.FailedPrecondition, errors.Unavailable, errors.DeadlineExceeded,
            errors.InvalidArgument) as err:
        # Refused (an account without catalog access, a registry without the API), not
        # reachable, or a stale page token: the page says so and lists the mirrors' names.
        return Catalog(error=err.message)
    return Catalog(list(page_.repositories), page_.next_page_token)


@page()
async def show_registry(request: web.Request, session: Session) -> web.StreamResponse:
    name = request.match_info["name"]
    endpoint = await session.client.transfers.get_endpoint(name)
    policies = await endpoint_policies(session, name)
    prefix = request.query.get("prefix", "").strip()
    token = request.query.get("repos", "")
    catalog = await catalog_page(session, name, console_of(request).cfg.repositories_per_page,
                                 prefix, token)
    mirrored = await mirrored_repositories(session, name, policies)
    return render(request, "registry.html", session, endpoint=endpoint,
                  catalog=catalog, prefix=prefix, older=bool(token),
                  mirrored=mirrored,
                  repositories=sorted(r for r in mirrored if r.startswith(prefix)),
                  policies=policies, events_url=events_url(request, name))


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
    """DTR's Connect: the five steps, each shown as it completes (admin tokens only)."""
    name = request.match_info["name"]
    form = await form_of(request)
    await session.client.transfers.get_endpoint(name)  # 404 for an unknown registry
    return connect_view.start(request, session, connect_view.ConnectRequest(
        name, text(form, "repository"), text(form, "check_push") == "on"
    ))


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
