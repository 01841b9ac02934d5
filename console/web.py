"""The plumbing every page shares: sessions on requests, CSRF, roles, headers, rendering.

Handlers are wrapped by `page(...)` rather than an application middleware, so the console's
routes can be added to another aiohttp application (the stack's HTTP port) without touching
that application's own routes.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jinja2
from aiohttp import web
from mirror import errors

from console.config import ConsoleConfig
from console.sessions import Session, SessionStore
from console.throttle import SignInThrottle

log = logging.getLogger("console")

COOKIE = "mirror_console"
PRE_COOKIE = "mirror_console_pre"
CSRF_FIELD = "_csrf"
CSRF_HEADER = "X-CSRF-Token"

SECURITY_HEADERS = {
    # Scripts and styles only from the console itself: no inline script, no CDN.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class Console:
    """What the handlers need, kept on the aiohttp application."""

    cfg: ConsoleConfig
    sessions: SessionStore
    templates: jinja2.Environment
    # Signs the sign-in form's CSRF token (there is no session yet to hold one).
    login_key: bytes
    # Set when the server shuts down: long-lived responses (server-sent events) end then, so
    # a shutdown does not wait for open browser tabs.
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    throttle: SignInThrottle = field(default_factory=lambda: SignInThrottle(10, 300.0))


CONSOLE: web.AppKey[Console] = web.AppKey("console", Console)

Handler = Callable[[web.Request, Session], Awaitable[web.StreamResponse]]
Wrapped = Callable[[web.Request], Awaitable[web.StreamResponse]]


def console_of(request: web.Request) -> Console:
    return request.app[CONSOLE]


def is_htmx(request: web.Request) -> bool:
    return request.headers.get("HX-Request") == "true"


def secure(resp: web.StreamResponse) -> web.StreamResponse:
    for k, v in SECURITY_HEADERS.items():
        resp.headers.setdefault(k, v)
    return resp


def render(
    request: web.Request, name: str, session: Session | None = None, *, http_status: int = 200,
    **context: Any,
) -> web.Response:
    c = console_of(request)
    html = c.templates.get_template(name).render(
        session=session,
        can_write=bool(session and session.can_write),
        csrf=session.csrf if session else "",
        path=request.path,
        **context,
    )
    return web.Response(text=html, status=http_status, content_type="text/html", charset="utf-8")


def to_login(request: web.Request) -> web.Response:
    if is_htmx(request):
        resp = web.Response(status=401)
        resp.headers["HX-Redirect"] = "/login"
        return resp
    raise web.HTTPSeeOther("/login")


def forbidden(request: web.Request, session: Session | None, message: str) -> web.Response:
    log.info("refused %s %s: %s", request.method, request.path, message)
    return render(
        request, "error.html", session, http_status=403, title="Forbidden", message=message
    )


async def form_of(request: web.Request) -> dict[str, Any]:
    """The request's form fields (multipart or urlencoded), read once and kept."""
    if "console_form" not in request:
        data = await request.post() if request.can_read_body else {}
        request["console_form"] = data
    return request["console_form"]  # type: ignore[no-any-return]


def page(*, write: bool = False) -> Callable[[Handler], Wrapped]:
    """Wrap a handler: a live session is required; POSTs need the session's CSRF token;
    `write` handlers need an admin token (403 otherwise, even when the button is forged)."""

    def wrap(handler: Handler) -> Wrapped:
        @functools.wraps(handler)
        async def run(request: web.Request) -> web.StreamResponse:
            c = console_of(request)
            session = await c.sessions.get(request.cookies.get(COOKIE))
            if session is None:
                return secure(to_login(request))
            if request.method not in ("GET", "HEAD"):
                form = await form_of(request)
                presented = request.headers.get(CSRF_HEADER) or str(form.get(CSRF_FIELD, ""))
                if not session.csrf_ok(presented):
                    return secure(forbidden(request, session, "missing or wrong CSRF token"))
            if write and not session.can_write:
                return secure(forbidden(
                    request, session, "this API token is read-only: it cannot change anything"
                ))
            try:
                resp = await handler(request, session)
            except errors.Unauthenticated:
                await c.sessions.end(session.id)
                return secure(to_login(request))
            except errors.MirrorError as err:
                resp = error_page(request, session, err)
            return secure(resp)

        return run

    return wrap


_STATUS = {
    errors.PermissionDenied: 403, errors.NotFound: 404, errors.InvalidArgument: 400,
    errors.AlreadyExists: 409, errors.FailedPrecondition: 409, errors.Aborted: 409,
    errors.Unavailable: 503, errors.DeadlineExceeded: 504,
}


def error_page(request: web.Request, session: Session, err: errors.MirrorError) -> web.Response:
    status = next((s for cls, s in _STATUS.items() if isinstance(err, cls)), 502)
    return render(
        request, "error.html", session, http_status=status, title=type(err).__name__,
        message=err.message, violations=err.field_violations,
    )


def login_csrf(c: Console, nonce: str) -> str:
    """The sign-in form's token: bound to the pre-sign-in cookie's nonce by an HMAC."""
    return hmac.new(c.login_key, nonce.encode(), hashlib.sha256).hexdigest()


def new_nonce() -> str:
    return secrets.token_urlsafe(24)


def set_cookie(resp: web.StreamResponse, c: Console, name: str, value: str, max_age: int) -> None:
    resp.set_cookie(
        name, value, max_age=max_age, path="/", httponly=True, samesite="Strict",
        secure=c.cfg.secure_cookie,
    )
