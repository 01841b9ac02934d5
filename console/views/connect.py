"""DTR's Connect, step by step (StreamConnectionTest).

The POST (CSRF-checked, admin only) stores what to check in the session and answers the five
steps as pending, with an event stream (`/connect/ID`) that fills in each step as the services
report it, then a summary. A check runs once: its id is taken from the session by the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from mirror import errors
from mirror.v1 import transfer_pb2

from console.sessions import Session
from console.web import Console, console_of, page, render

log = logging.getLogger("console.connect")

Check = transfer_pb2.ConnectionCheck

# (step, event name, label) in the order the page lists them.
STEPS = (
    (Check.STEP_REACHABLE, "reachable", "Reachable"),
    (Check.STEP_TLS_VERIFIED, "tls", "TLS verified"),
    (Check.STEP_AUTHENTICATED, "authenticated", "Authenticated"),
    (Check.STEP_PULL_ALLOWED, "pull", "Pull allowed"),
    (Check.STEP_PUSH_ALLOWED, "push", "Push allowed"),
)
RESULT_LABELS = {
    Check.RESULT_OK: "ok",
    Check.RESULT_FAILED: "failed",
    Check.RESULT_SKIPPED: "skipped",
}
# Checks a session may have asked for and not yet streamed (the oldest are dropped).
MAX_PENDING = 8


@dataclass(frozen=True)
class ConnectRequest:
    endpoint: str
    repository: str
    check_push: bool


def pending_steps() -> list[dict[str, str]]:
    return [{"key": key, "label": label, "result": "pending", "message": ""}
            for _, key, label in STEPS]


def start(
    request: web.Request, session: Session, check: ConnectRequest, created: str = ""
) -> web.Response:
    """The steps as pending, connected to the stream that completes them."""
    while len(session.connects) >= MAX_PENDING:
        session.connects.pop(next(iter(session.connects)))
    check_id = secrets.token_urlsafe(16)
    session.connects[check_id] = check
    return render(request, "_connect.html", session, steps=pending_steps(),
                  stream=f"/connect/{check_id}", created=created)


def _event(name: str, html: str) -> bytes:
    data = "".join(f"data: {line}\n" for line in html.splitlines() or [""])
    return f"event: {name}\n{data}\n".encode()


async def _until_closing(c: Console, checks: AsyncIterator[Check]) -> AsyncIterator[Check]:
    """The checks as they arrive, ending early when the server shuts down (or when the
    caller stops, e.g. on its deadline: the call under way is cancelled, not left running)."""
    closing = asyncio.ensure_future(c.closing.wait())
    step: asyncio.Future[Check] | None = None
    try:
        while True:
            step = asyncio.ensure_future(anext(checks))
            done, _ = await asyncio.wait({step, closing}, return_when=asyncio.FIRST_COMPLETED)
            if step not in done:
                return
            try:
                yield step.result()
            except StopAsyncIteration:
                return
    finally:
        closing.cancel()
        if step is not None and not step.done():
            step.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await step
        with contextlib.suppress(Exception):
            await checks.aclose()  # type: ignore[attr-defined]


@page(write=True)
async def stream(request: web.Request, session: Session) -> web.StreamResponse:
    """Server-sent events: one per step as it completes (`reachable`, `tls`, ...), then
    `done` with the summary and `close` (the page closes its event source on it)."""
    c = console_of(request)
    check: ConnectRequest | None = session.connects.pop(request.match_info["id"], None)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-store"})
    await resp.prepare(request)
    step_tpl = c.templates.get_template("_connect_step.html")
    done_tpl = c.templates.get_template("_connect_done.html")
    try:
        if check is None:
            # Already streamed (a reconnect) or never asked for: nothing more to say.
            await resp.write(_event("close", ""))
            return resp
        seen: set[int] = set()
        failed = False
        error = ""
        labels = {step: (key, label) for step, key, label in STEPS}
        try:
            async with asyncio.timeout(c.cfg.call_timeout_s):
                checks = session.client.transfers.stream_connection_test(
                    check.endpoint, repository=check.repository, check_push=check.check_push
                )
                async for got in _until_closing(c, checks):
                    if got.step not in labels:
                        continue
                    key, label = labels[got.step]
                    result = RESULT_LABELS.get(got.result, "skipped")
                    failed = failed or result == "failed"
                    seen.add(got.step)
                    html = step_tpl.render(s={"key": key, "label": label, "result": result,
                                              "message": got.message})
                    await resp.write(_event(key, html))
        except errors.MirrorError as err:
            error = err.message
        except TimeoutError:
            error = f"no answer within {c.cfg.call_timeout_s:.0f} seconds"
        if c.closing.is_set() and len(seen) < len(STEPS):
            error = error or "the console is shutting down"
        # Steps never reported (push when it is not asked for, or the check ended early)
        # are skipped, not left as "checking".
        for step, key, label in STEPS:
            if step not in seen:
                html = step_tpl.render(s={"key": key, "label": label, "result": "skipped",
                                          "message": "not checked" if error else ""})
                await resp.write(_event(key, html))
        ok = not failed and not error
        await resp.write(_event("done", done_tpl.render(ok=ok, error=error)))
        await resp.write(_event("close", ""))
    except ConnectionResetError as exc:
        log.debug("connect stream ended: %s", exc)
    return resp
