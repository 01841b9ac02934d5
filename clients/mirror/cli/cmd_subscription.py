"""`mirrorctl subscription ...`: outbound events (signed webhooks) and their delivery log."""

from __future__ import annotations

import argparse
from typing import Any

from mirror import enums
from mirror.cli.cmd_endpoint import read_secret
from mirror.cli.context import Context
from mirror.cli.output import const, enum_name, to_data, when
from mirror.cli.parsing import command
from mirror.v1 import gateway_pb2

EVENT_TYPES = enums.choices(gateway_pb2.EventType.DESCRIPTOR)


def _events(s: gateway_pb2.Subscription) -> str:
    return ", ".join(enum_name(gateway_pb2.EventType, t) for t in s.event_types) or "all"


COLUMNS = [
    ("ID", lambda s: s.id),
    ("URL", lambda s: s.url),
    ("EVENTS", _events),
    ("POLICY", lambda s: s.policy_id or "all"),
    ("SIGNED", lambda s: s.has_secret),
]
WIDE = [("CREATED", lambda s: when(s.create_time))]

DELIVERY_COLUMNS = [
    ("ID", lambda d: d.id),
    ("EVENT", lambda d: enum_name(gateway_pb2.EventType, d.event_type)),
    ("RUN", lambda d: d.run_id),
    ("STATE", lambda d: enum_name(gateway_pb2.Delivery.State, d.state)),
    ("ATTEMPTS", lambda d: d.attempts),
    ("HTTP", lambda d: d.response_code or ""),
    ("LAST ATTEMPT", lambda d: when(d.last_attempt_time)),
    ("MESSAGE", lambda d: d.message),
]
DELIVERY_WIDE = [
    ("SUBSCRIPTION", lambda d: d.subscription_id),
    ("CREATED", lambda d: when(d.create_time)),
]


def parse_events(values: list[str] | None) -> list[int]:
    """`push_mirroring,tag_deletion` (repeatable) -> EventType values; ValueError (exit 2)
    naming the valid ones otherwise."""
    out: list[int] = []
    for value in values or ():
        for name in value.split(","):
            if name.strip():
                out.append(enums.value_of(gateway_pb2.EventType.DESCRIPTOR, name.strip()))
    return out


def _data(s: gateway_pb2.Subscription) -> dict[str, Any]:
    """-o json/yaml of a subscription: the secret only when the server just made it."""
    data = to_data(s)
    data.pop("secret", None)
    if s.secret:
        data["secret"] = s.secret
    return dict(data)


def _fields(s: gateway_pb2.Subscription) -> list[tuple[str, object]]:
    return [
        ("id", s.id), ("url", s.url), ("events", _events(s)), ("policy", s.policy_id or "all"),
        ("secret", "stored (never shown)" if s.has_secret else "none (unsigned)"),
        ("created", when(s.create_time)),
    ]


def create(ctx: Context) -> int:
    a = ctx.args
    policy_id = ""
    if a.policy:
        from mirror.cli.cmd_policy import resolve

        policy_id = resolve(ctx.client, a.policy).id
    sub = ctx.client.gateway.create_subscription(
        url=a.url, event_types=parse_events(a.events), policy_id=policy_id,
        secret=read_secret(a) or "",
    )
    if ctx.out.machine:
        ctx.out.data(_data(sub))
        return 0
    ctx.out.message(f"subscription {sub.id} created: {_events(sub)} events to {sub.url}")
    if sub.secret:
        # On stdout: the one time it can be seen (it is never returned again).
        ctx.out.console.print(f"secret: {sub.secret}", highlight=False, markup=False)
        ctx.out.message("keep the secret now: it is never shown again (verify "
                        "X-Mirror-Signature with it, see docs/events.md)")
    return 0


def list_(ctx: Context) -> int:
    items = list(ctx.client.gateway.iter_subscriptions())
    if ctx.out.machine:
        ctx.out.data([_data(s) for s in items])
        return 0
    ctx.out.rows(items, COLUMNS, wide=WIDE,
                 empty="no subscriptions; add one with: mirrorctl subscription create URL")
    return 0


def get(ctx: Context) -> int:
    sub = ctx.client.gateway.get_subscription(ctx.args.id)
    if ctx.out.machine:
        ctx.out.data(_data(sub))
        return 0
    ctx.out.record(sub, [(k, const(v)) for k, v in _fields(sub)])
    return 0


def delete(ctx: Context) -> int:
    ctx.client.gateway.delete_subscription(ctx.args.id)
    ctx.out.message(f"subscription {ctx.args.id} deleted (with its delivery log)")
    return 0


def deliveries(ctx: Context) -> int:
    a = ctx.args
    items = []
    for d in ctx.client.gateway.iter_deliveries(a.id or ""):
        items.append(d)
        if a.limit and len(items) >= a.limit:
            break
    ctx.out.rows(items, DELIVERY_COLUMNS, wide=DELIVERY_WIDE, empty="no deliveries yet")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    grp = command(sub, "subscription", help="outbound events (signed webhooks) and deliveries",
                  common=common, examples=(
                      "  mirrorctl subscription create https://ci.example/hook "
                      "--events push_mirroring\n  mirrorctl subscription deliveries SUB"))
    s = grp.add_subparsers(title="commands", metavar="COMMAND")
    p = command(s, "create", help="POST events of image-mirror to a URL", func=create,
                common=common, examples=(
                    "  mirrorctl subscription create https://ci.example/hook\n"
                    "  mirrorctl subscription create https://ci.example/hook "
                    "--events push_mirroring,tag_deletion --policy promote-stable\n"
                    "  printf '%s\\n' \"$HOOK_SECRET\" | mirrorctl subscription create "
                    "https://ci.example/hook --secret-stdin\n"
                    "without --secret-stdin the server makes a secret and prints it once; "
                    "each POST carries X-Mirror-Signature (docs/events.md)"))
    p.add_argument("url", metavar="URL", help="http(s) URL the events are POSTed to")
    p.add_argument("--events", action="append", metavar="TYPE[,TYPE]",
                   help=f"event types ({', '.join(EVENT_TYPES)}); default: all")
    p.add_argument("--policy", metavar="ID-or-NAME", help="only this policy's events")
    p.add_argument("--secret-stdin", action="store_true",
                   help="read the signing secret (16+ characters) from the first line of stdin")
    p = command(s, "list", help="list subscriptions", func=list_, common=common,
                examples="  mirrorctl subscription list\n  mirrorctl subscription list -o json")
    p = command(s, "get", help="show one subscription", func=get, common=common,
                examples="  mirrorctl subscription get SUB")
    p.add_argument("id", metavar="SUB", help="subscription id")
    p = command(s, "delete", help="stop sending to a subscription", func=delete, common=common,
                examples="  mirrorctl subscription delete SUB")
    p.add_argument("id", metavar="SUB", help="subscription id")
    p = command(s, "deliveries", help="the delivery log, newest first", func=deliveries,
                common=common, examples=(
                    "  mirrorctl subscription deliveries SUB\n"
                    "  mirrorctl subscription deliveries SUB -o json\n"
                    "  mirrorctl subscription deliveries      # every subscription's"))
    p.add_argument("id", metavar="SUB", nargs="?", help="subscription id (default: all)")
    p.add_argument("--limit", type=int, default=0, help="show at most N")
