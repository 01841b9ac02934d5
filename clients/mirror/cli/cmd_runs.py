"""`mirrorctl runs list`: what each policy did with each pushed image."""

from __future__ import annotations

import argparse

from mirror.cli.context import Context
from mirror.cli.output import enum_name, when
from mirror.cli.parsing import command
from mirror.v1 import gateway_pb2

COLUMNS = [
    ("ID", lambda r: r.id),
    ("POLICY", lambda r: r.policy_name or r.policy_id),
    ("STATE", lambda r: enum_name(gateway_pb2.Run.State, r.state)),
    ("TRIGGER", lambda r: enum_name(gateway_pb2.Run.Trigger, r.trigger, "TRIGGER_")),
    ("SOURCE", lambda r: f"{r.source.endpoint}/{r.source.repository}:{r.source.reference}"),
    ("DESTINATION", lambda r: f"{r.destination.endpoint}/{r.destination.repository}"
     + (f":{r.destination_tag}" if r.destination_tag else "")),
    ("TRANSFER", lambda r: r.transfer_id),
    ("CREATED", lambda r: when(r.create_time)),
    ("MESSAGE", lambda r: r.message),
]


def list_(ctx: Context) -> int:
    a = ctx.args
    policy_id = ""
    if a.policy:
        from mirror.cli.cmd_policy import resolve

        policy_id = resolve(ctx.client, a.policy).id
    runs = []
    for r in ctx.client.gateway.iter_runs(policy_id=policy_id, states=a.state or ()):
        runs.append(r)
        if a.limit and len(runs) >= a.limit:
            break
    ctx.out.rows(runs, COLUMNS, empty="no runs yet")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    grp = command(sub, "runs", help="policy runs (one per policy and pushed image)",
                  common=common, examples="  mirrorctl runs list --policy promote-stable")
    s = grp.add_subparsers(title="commands", metavar="COMMAND")
    p = command(s, "list", help="list runs", func=list_, common=common, examples=(
        "  mirrorctl runs list\n  mirrorctl runs list --policy promote-stable --state failed\n"
        "  mirrorctl runs list -o json"))
    p.add_argument("--policy", metavar="ID-or-NAME")
    p.add_argument("--state", action="append",
                   choices=["pending", "running", "succeeded", "failed", "not_matched"])
    p.add_argument("--limit", type=int, default=0, help="show at most N")
