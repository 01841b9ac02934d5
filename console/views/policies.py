"""Policies: the list, a policy's page (runs with their explanation, live progress),
enable / disable, apply, delete with a confirmation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import web
from mirror import errors
from mirror.v1 import gateway_pb2, policy_pb2, transfer_pb2

from console.sessions import Session
from console.views.forms import text
from console.views.mirrors import with_status
from console.web import console_of, form_of, page, render

log = logging.getLogger("console.policies")

ACTIVE_RUNS = (gateway_pb2.Run.STATE_PENDING, gateway_pb2.Run.STATE_RUNNING)


def state_name(run_state: int) -> str:
    return gateway_pb2.Run.State.Name(run_state).removeprefix("STATE_")  # type: ignore[arg-type]


ACTION_LABELS: dict[int, str] = {
    gateway_pb2.Run.ACTION_COPY: "copy",
    gateway_pb2.Run.ACTION_DELETE: "delete",
    gateway_pb2.Run.ACTION_DELETE_DRY_RUN: "dry-run delete",
}
TRIGGER_LABELS: dict[int, str] = {
    gateway_pb2.Run.TRIGGER_EVENT: "push",
    gateway_pb2.Run.TRIGGER_NOTIFY: "notified push",
    gateway_pb2.Run.TRIGGER_APPLY: "applied",
    gateway_pb2.Run.TRIGGER_RECONCILE: "reconcile",
    gateway_pb2.Run.TRIGGER_SCHEDULE: "scheduled poll",
    gateway_pb2.Run.TRIGGER_LATE_METADATA: "late metadata",
}


def action_name(action: int) -> str:
    """What a run did: copy, delete, or a deletion a dry run only recorded."""
    return ACTION_LABELS.get(action, "copy")


def trigger_name(trigger: int) -> str:
    return TRIGGER_LABELS.get(trigger, "unknown")


# Polls of a scheduled policy shown on its page.
RECENT_POLLS = 10


@page()
async def list_policies(request: web.Request, session: Session) -> web.StreamResponse:
    policies = [p async for p in session.client.policies.iter()]
    return render(request, "policies.html", session,
                  rows=await with_status(session, policies))


FILTERS = ("succeeded", "failed", "blocked", "skipped", "not_matched", "running", "pending")


async def runs_view(
    session: Session, policy_id: str, page_size: int, state: str = "", page_token: str = ""
) -> tuple[list[dict[str, Any]], str]:
    """One page of runs, newest first (only those in `state` when given), with the progress
    of the transfers still under way, and the next page's token."""
    states = [state] if state in FILTERS else []
    page_ = await session.client.gateway.list_runs(
        policy_id=policy_id, states=states, page_size=page_size, page_token=page_token
    )
    out = []
    for run in page_.runs:
        progress: transfer_pb2.Transfer | None = None
        if run.state in ACTIVE_RUNS and run.transfer_id:
            try:
                progress = await session.client.transfers.get(run.transfer_id)
            except errors.NotFound:
                progress = None
        out.append({"run": run, "state": state_name(run.state), "transfer": progress})
    return out, page_.next_page_token


@page()
async def show_policy(request: web.Request, session: Session) -> web.StreamResponse:
    policy_id = request.match_info["id"]
    policy = await session.client.policies.get(policy_id)
    status = await session.client.gateway.get_policy_status(policy_id)
    state = request.query.get("state", "")
    state = state if state in FILTERS else ""
    page_token = request.query.get("page", "")
    per_page = console_of(request).cfg.runs_per_page
    runs, next_token = await runs_view(session, policy_id, per_page, state, page_token)
    polls = []
    if policy.trigger.WhichOneof("kind") == "schedule":
        polls = list((await session.client.gateway.list_polls(
            policy_id, page_size=RECENT_POLLS)).polls)
    return render(
        request, "policy.html", session, policy=policy, status=status,
        last_state=state_name(status.last_state) if status.last_state else "never ran",
        runs=runs, next_token=next_token, state=state, filters=FILTERS, polls=polls,
        older=bool(page_token),
        applied=request.query.get("applied"), evaluated=request.query.get("evaluated"),
        overwrite="never" if policy.overwrite == policy_pb2.OVERWRITE_NEVER else "always",
    )


@page()
async def live_runs(request: web.Request, session: Session) -> web.StreamResponse:
    """Server-sent events: the runs table again each time it changes (transfer progress)."""
    c = console_of(request)
    policy_id = request.match_info["id"]
    state = request.query.get("state", "")
    await session.client.policies.get(policy_id)  # 404 (not an endless stream) when unknown
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-store"})
    await resp.prepare(request)
    last = ""
    templates = c.templates.get_template("_runs.html")
    try:
        # Bounded by the session: a signed-out or expired session ends the stream (an open
        # stream is not activity: it does not keep the session alive).
        while c.sessions.alive(session) and not c.closing.is_set():
            runs, _ = await runs_view(session, policy_id, c.cfg.runs_per_page, state)
            html = templates.render(runs=runs)
            if html != last:
                data = "".join(f"data: {line}\n" for line in html.splitlines())
                await resp.write(f"event: runs\n{data}\n".encode())
                last = html
            # The refresh cadence; a shutdown ends the wait (and the stream) at once.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(c.closing.wait(), c.cfg.live_interval_s)
    except (ConnectionResetError, errors.MirrorError) as exc:
        log.debug("live runs of %s ended: %s", policy_id, exc)
    return resp


async def _set_enabled(request: web.Request, session: Session, enabled: bool
                       ) -> web.StreamResponse:
    policy_id = request.match_info["id"]
    policy = await session.client.policies.get(policy_id)
    await session.client.policies.update(policy_id, enabled=enabled, etag=policy.etag)
    raise web.HTTPSeeOther(f"/policies/{policy_id}")


@page(write=True)
async def enable_policy(request: web.Request, session: Session) -> web.StreamResponse:
    return await _set_enabled(request, session, True)


@page(write=True)
async def disable_policy(request: web.Request, session: Session) -> web.StreamResponse:
    return await _set_enabled(request, session, False)


@page(write=True)
async def apply_policy(request: web.Request, session: Session) -> web.StreamResponse:
    policy_id = request.match_info["id"]
    applied = await session.client.gateway.apply_policy(policy_id)
    raise web.HTTPSeeOther(f"/policies/{policy_id}?applied={applied.tags_matched}"
                           f"&evaluated={applied.tags_evaluated}")


@page(write=True)
async def confirm_delete(request: web.Request, session: Session) -> web.StreamResponse:
    policy = await session.client.policies.get(request.match_info["id"])
    return render(request, "policy_delete.html", session, policy=policy)


@page(write=True)
async def delete_policy(request: web.Request, session: Session) -> web.StreamResponse:
    policy = await session.client.policies.get(request.match_info["id"])
    await session.client.policies.delete(policy.id, etag=policy.etag)
    raise web.HTTPSeeOther("/policies")


def _edit_values(policy: policy_pb2.Policy) -> dict[str, str]:
    template = policy.tag_template or "%n"
    return {
        "name": policy.name, "description": policy.description,
        "tag_mode": "keep" if template == "%n" else "template",
        "tag_template": template if template != "%n" else "%Y%m%d-%H%M%S",
        "time_zone": policy.time_zone,
        "overwrite": "never" if policy.overwrite == policy_pb2.OVERWRITE_NEVER else "always",
    }


@page(write=True)
async def edit_policy(request: web.Request, session: Session) -> web.StreamResponse:
    policy = await session.client.policies.get(request.match_info["id"])
    return render(request, "policy_edit.html", session, policy=policy,
                  values=_edit_values(policy), rule=policy.rule)


@page(write=True)
async def update_policy(request: web.Request, session: Session) -> web.StreamResponse:
    """Save the edit: the whole policy as read, with the form's fields, under the etag the
    form was made from (a policy changed meanwhile is refused, not overwritten)."""
    form = await form_of(request)
    policy = await session.client.policies.get(request.match_info["id"])
    policy.etag = text(form, "etag")
    policy.name = text(form, "name")
    policy.description = text(form, "description")
    policy.rule = text(form, "rule")
    policy.tag_template = ("%n" if text(form, "tag_mode") != "template"
                           else text(form, "tag_template"))
    policy.time_zone = text(form, "time_zone")
    policy.overwrite = (policy_pb2.OVERWRITE_NEVER if text(form, "overwrite") == "never"
                        else policy_pb2.OVERWRITE_ALWAYS)
    try:
        await session.client.policies.replace(policy)
    except (errors.InvalidArgument, errors.Aborted, errors.AlreadyExists) as err:
        values = {k: text(form, k) for k in form if isinstance(form[k], str) and k != "_csrf"}
        return render(request, "policy_edit.html", session, http_status=400, policy=policy,
                      values=values, rule=policy.rule, error=err)
    raise web.HTTPSeeOther(f"/policies/{policy.id}")
