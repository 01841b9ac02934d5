"""`mirrorctl policy polls` and `mirrorctl policy prune`: what a pull mirror's polls saw and
did, and removing the destination tags a policy wrote that no longer match."""

from __future__ import annotations

import argparse

from mirror.cli.context import Context
from mirror.cli.output import enum_name, when
from mirror.cli.parsing import command, image_text
from mirror.v1 import gateway_pb2


def _seconds(p: gateway_pb2.Poll) -> str:
    if not p.HasField("end_time") or not p.HasField("start_time"):
        return ""
    ns = p.end_time.ToNanoseconds() - p.start_time.ToNanoseconds()
    return f"{ns / 1e9:.1f}s"


POLL_COLUMNS = [
    ("ID", lambda p: p.id),
    ("STARTED", lambda p: when(p.start_time)),
    ("TOOK", _seconds),
    ("LISTED", lambda p: p.tags_listed),
    ("CHANGED", lambda p: p.tags_changed),
    ("COPIED", lambda p: p.tags_copied),
    ("SKIPPED", lambda p: p.tags_skipped),
    ("FAILED", lambda p: p.tags_failed),
    ("DELETED", lambda p: p.tags_deleted),
    ("REQUESTS", lambda p: p.requests),
    ("MESSAGE", lambda p: p.message),
]
POLL_WIDE = [("ENDED", lambda p: when(p.end_time))]

PRUNE_COLUMNS = [
    ("ACTION", lambda r: enum_name(gateway_pb2.Run.Action, r.action)),
    ("DESTINATION", lambda r: image_text(r.destination.endpoint, r.destination.repository,
                                         r.destination_tag)),
    ("DIGEST", lambda r: r.source_digest),
    ("STATE", lambda r: enum_name(gateway_pb2.Run.State, r.state)),
    ("MESSAGE", lambda r: r.message),
]


def polls(ctx: Context) -> int:
    from mirror.cli.cmd_policy import resolve

    a = ctx.args
    policy = resolve(ctx.client, a.policy)
    items = []
    for poll in ctx.client.gateway.iter_polls(policy.id):
        items.append(poll)
        if a.limit and len(items) >= a.limit:
            break
    ctx.out.rows(items, POLL_COLUMNS, wide=POLL_WIDE,
                 empty=f"no polls of {policy.name} yet (only scheduled policies poll: "
                 "trigger: {schedule: ...})")
    return 0


def prune(ctx: Context) -> int:
    from mirror.cli.cmd_policy import resolve

    a = ctx.args
    policy = resolve(ctx.client, a.policy)
    resp = ctx.client.gateway.prune_policy(policy.id, dry_run=a.dry_run)
    if ctx.out.machine:
        ctx.out.data(resp)
        return 0
    verb = "would delete" if a.dry_run else "deleted"
    ctx.out.message(f"{policy.name}: {verb} {len(resp.runs)} tag(s), kept {resp.tags_kept}"
                    + (" (dry run: nothing deleted)" if a.dry_run else ""))
    if resp.runs:
        ctx.out.rows(list(resp.runs), PRUNE_COLUMNS)
    return 0


def register(s: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    """The sub-commands of `mirrorctl policy` defined here."""
    p = command(s, "polls", help="the scheduled polls of a policy, newest first",
                func=polls, common=common, examples=(
                    "  mirrorctl policy polls pull-nginx\n"
                    "  mirrorctl policy polls pull-nginx --limit 0 -o json   # every poll\n"
                    "a poll lists the source's tags, HEADs each and copies only new or moved "
                    "ones;\nREQUESTS counts the registry requests it made"))
    p.add_argument("policy", metavar="ID-or-NAME")
    p.add_argument("--limit", type=int, default=20, help="show at most N (0: all; default 20)")
    p = command(s, "prune", help="delete destination tags this policy wrote that no longer "
                "match", func=prune, common=common, examples=(
                    "  mirrorctl policy prune pull-nginx --dry-run   # list, delete nothing\n"
                    "  mirrorctl policy prune pull-nginx\n"
                    "only tags this policy wrote are deleted, each recorded as a delete run "
                    "(mirrorctl runs list)"))
    p.add_argument("policy", metavar="ID-or-NAME")
    p.add_argument("--dry-run", action="store_true",
                   help="record what would be deleted (delete_dry_run runs); delete nothing")
