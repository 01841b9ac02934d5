"""`mirrorctl runs list`: what each policy did with each pushed image."""

from __future__ import annotations

import argparse

from mirror import enums
from mirror.cli.context import Context
from mirror.cli.output import enum_name, when
from mirror.cli.parsing import command, image_text
from mirror.v1 import gateway_pb2

COLUMNS = [
    ("ID", lambda r: r.id),
    ("POLICY", lambda r: r.policy_name or r.policy_id),
    ("STATE", lambda r: enum_name(gateway_pb2.Run.State, r.state)),
    ("TRIGGER", lambda r: enum_name(gateway_pb2.Run.Trigger, r.trigger)),
    ("SOURCE", lambda r: image_text(r.source.endpoint, r.source.repository, r.source.reference)),
    ("DESTINATION", lambda r: image_text(r.destination.endpoint, r.destination.repository,
                                         r.destination_tag)),
    ("TRANSFER", lambda r: r.transfer_id),
    ("CREATED", lambda r: when(r.create_time)),
    ("MESSAGE", lambda r: r.message),
]
# -o wide: what made the run and what it did (copy or delete, the digest the destination
# tag held before), where the image came from before this run (a promotion chain), the digest.
WIDE = [
    ("ACTION", lambda r: enum_name(gateway_pb2.Run.Action, r.action)),
    ("CAUSE", lambda r: r.cause),
    ("PREVIOUS DIGEST", lambda r: r.previous_digest),
    ("POLL", lambda r: r.poll_id),
    ("HOP", lambda r: r.hop),
    ("PROVENANCE", lambda r: " -> ".join(
        image_text(p.endpoint, p.repository, p.reference) for p in r.provenance)),
    ("DIGEST", lambda r: r.source_digest),
    ("ENDED", lambda r: when(r.end_time)),
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
    ctx.out.rows(runs, COLUMNS, wide=WIDE, empty="no runs yet")
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    grp = command(sub, "runs", help="policy runs (one per policy and pushed image)",
                  common=common, examples="  mirrorctl runs list --policy promote-stable")
    s = grp.add_subparsers(title="commands", metavar="COMMAND")
    p = command(s, "list", help="list runs", func=list_, common=common, examples=(
        "  mirrorctl runs list\n  mirrorctl runs list --policy promote-stable --state failed\n"
        "  mirrorctl runs list --state blocked -o wide   # why the gate held an image back\n"
        "  mirrorctl runs list --policy pull-nginx -o wide   # cause, copy or delete, the "
        "digest a moved tag held\n"
        "  mirrorctl runs list -o json"))
    p.add_argument("--policy", metavar="ID-or-NAME")
    p.add_argument("--state", action="append",
                   choices=enums.choices(gateway_pb2.Run.State.DESCRIPTOR))
    p.add_argument("--limit", type=int, default=0, help="show at most N")
