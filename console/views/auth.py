"""Sign-in with an API token, sign-out; the token's role is asked of the services."""

from __future__ import annotations

import hmac
import logging

from aiohttp import web
from mirror import aio, errors
from mirror.v1 import policy_pb2

from console.sessions import Role, Session
from console.web import (
    COOKIE,
    CSRF_FIELD,
    PRE_COOKIE,
    Console,
    console_of,
    form_of,
    login_csrf,
    new_nonce,
    page,
    render,
    secure,
    set_cookie,
)

log = logging.getLogger("console.auth")

# Named in the role probe's (nameless, never saved) policy.
PROBE_ENDPOINT = "console-role-probe"


async def probe_role(client: aio.AsyncClient) -> Role:
    """READ or ADMIN for the client's token; raises Unauthenticated for a bad token.

    A read proves the token is valid. Writing is probed with a CreatePolicy that only
    validates an empty policy: an admin token gets INVALID_ARGUMENT, a read-only one
    PERMISSION_DENIED, and nothing is ever saved.
    """
    await client.transfers.list_endpoints(page_size=1)
    try:
        probe = policy_pb2.Policy(source=policy_pb2.PolicySource(endpoint=PROBE_ENDPOINT))
        await client.policies.create(policy=probe, validate_only=True)
    except errors.PermissionDenied:
        return Role.READ
    except errors.Unauthenticated:
        raise
    except errors.MirrorError:
        return Role.ADMIN
    return Role.ADMIN


def _login_page(request: web.Request, c: Console, error: str = "", status: int = 200
                ) -> web.Response:
    nonce = new_nonce()
    resp = render(request, "login.html", None, http_status=status, error=error,
                  login_csrf=login_csrf(c, nonce))
    set_cookie(resp, c, PRE_COOKIE, nonce, max_age=3600)
    secure(resp)
    return resp


async def login_form(request: web.Request) -> web.StreamResponse:
    c = console_of(request)
    if await c.sessions.get(request.cookies.get(COOKIE)) is not None:
        raise web.HTTPSeeOther("/registries")
    return _login_page(request, c)


async def login(request: web.Request) -> web.StreamResponse:
    c = console_of(request)
    form = await form_of(request)
    nonce = request.cookies.get(PRE_COOKIE, "")
    presented = str(form.get(CSRF_FIELD, ""))
    if not nonce or not hmac.compare_digest(login_csrf(c, nonce), presented):
        return _login_page(request, c, "The sign-in form expired; please try again.", 403)
    client_key = request.remote or ""
    wait = c.throttle.retry_after(client_key)
    if wait > 0:
        resp = _login_page(
            request, c, f"Too many failed sign-ins: try again in {int(wait) + 1} s.", 429
        )
        resp.headers["Retry-After"] = str(int(wait) + 1)
        return resp
    token = str(form.get("token", "")).strip()
    if not token:
        return _login_page(request, c, "Enter an API token.", 400)
    client = aio.connect(
        c.cfg.address, tls=c.cfg.tls, token=token, timeout=c.cfg.call_timeout_s,
        addresses=c.cfg.addresses,
    )
    try:
        role = await probe_role(client)
    except errors.Unauthenticated:
        await client.close()
        c.throttle.failed(client_key)
        log.info("sign-in refused: invalid token (from %s)", client_key)
        return _login_page(request, c, "This API token is not valid.", 401)
    except errors.MirrorError as err:
        await client.close()
        log.warning("sign-in failed: %s", err.message)
        return _login_page(request, c, f"The services did not answer: {err.message}", 503)
    c.throttle.succeeded(client_key)
    session = await c.sessions.create(role, client)
    log.info("signed in (%s)", role.name.lower())
    resp = web.HTTPSeeOther("/registries")
    set_cookie(resp, c, COOKIE, session.id, max_age=int(c.cfg.max_age_s))
    resp.del_cookie(PRE_COOKIE, path="/")
    secure(resp)
    raise resp


@page()
async def logout(request: web.Request, session: Session) -> web.StreamResponse:
    await console_of(request).sessions.end(session.id)
    resp = web.HTTPSeeOther("/login")
    resp.del_cookie(COOKIE, path="/")
    raise resp


async def index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/registries")
