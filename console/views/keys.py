"""Trusted keys (the public keys `signed_by "NAME"` rules verify signatures against): list,
add from a pasted PEM, delete (refused while a rule names the key)."""

from __future__ import annotations

from aiohttp import web
from mirror import errors

from console.sessions import Session
from console.views.forms import text
from console.web import form_of, page, render


async def _keys_page(request: web.Request, session: Session, *, http_status: int = 200,
                     error: errors.MirrorError | None = None,
                     values: dict[str, str] | None = None) -> web.Response:
    keys = [k async for k in session.client.policies.iter_trusted_keys()]
    return render(request, "keys.html", session, http_status=http_status, keys=keys,
                  error=error, values=values or {})


@page()
async def list_keys(request: web.Request, session: Session) -> web.StreamResponse:
    return await _keys_page(request, session)


@page(write=True)
async def create_key(request: web.Request, session: Session) -> web.StreamResponse:
    form = await form_of(request)
    name = text(form, "name")
    pem = text(form, "public_key_pem")
    try:
        await session.client.policies.create_trusted_key(
            name=name, public_key_pem=pem + "\n" if pem else ""
        )
    except (errors.InvalidArgument, errors.AlreadyExists) as err:
        # A public key is no secret: the form keeps it so the mistake can be fixed.
        return await _keys_page(request, session, http_status=400, error=err,
                                values={"name": name, "public_key_pem": pem})
    raise web.HTTPSeeOther("/keys")


@page(write=True)
async def delete_key(request: web.Request, session: Session) -> web.StreamResponse:
    try:
        await session.client.policies.delete_trusted_key(request.match_info["name"])
    except errors.FailedPrecondition as err:
        return await _keys_page(request, session, http_status=409, error=err)
    raise web.HTTPSeeOther("/keys")
