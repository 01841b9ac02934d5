"""`mirrorctl transfer ...`: copy jobs between endpoints."""

from __future__ import annotations

import argparse

from mirror import enums, policyfields
from mirror.cli.context import EXIT_SERVER, Context
from mirror.cli.output import const, enum_name, human_bytes, when
from mirror.cli.parsing import command, image_ref, image_text
from mirror.cli.progress import FINAL, follow, summary
from mirror.v1 import transfer_pb2

COLUMNS = [
    ("ID", lambda t: t.id),
    ("STATE", lambda t: enum_name(transfer_pb2.Transfer.State, t.state)),
    ("SOURCE", lambda t: image_text(t.source.endpoint, t.source.repository, t.source.reference)),
    ("DESTINATION", lambda t: image_text(t.destination.endpoint, t.destination.repository,
                                         t.destination.tag)),
    ("BYTES", lambda t: f"{human_bytes(t.bytes_done + t.bytes_skipped)}/"
     f"{human_bytes(t.bytes_total)}"),
    ("CREATED", lambda t: when(t.create_time)),
    ("MESSAGE", lambda t: t.message),
]
WIDE = [
    ("DIGEST", lambda t: t.digest),
    ("BLOBS", lambda t: f"{t.blobs_done + t.blobs_skipped + t.blobs_mounted}/{t.blobs_total}"),
    ("ATTEMPTS", lambda t: t.attempts),
    ("NEXT ATTEMPT", lambda t: when(t.next_attempt_time)),
    ("ENDED", lambda t: when(t.end_time)),
    ("REFERRERS", lambda t: _referrers(t)),
]


def _referrers(t: transfer_pb2.Transfer) -> list[str]:
    """`signature sha256-<hex>.sig`, `sbom sha256:...`: what was copied after the image."""
    return [f"{r.kind} {r.tag or r.digest}" for r in t.referrers]


def _exit_for(t: transfer_pb2.Transfer | None) -> int:
    return 0 if t is not None and t.state == transfer_pb2.Transfer.STATE_DONE else EXIT_SERVER


def _watch(ctx: Context, transfer_id: str) -> int:
    last = follow(ctx.client.transfers.watch(transfer_id), fmt=ctx.out.fmt)
    if last is None or last.state not in FINAL:
        # The stream ended early (server restart): report where the job stands now.
        last = ctx.client.transfers.get(transfer_id)
        ctx.out.message(summary(last))
    return _exit_for(last)


def start(ctx: Context) -> int:
    a = ctx.args
    src = image_ref(a.source, what="source")
    dst = image_ref(a.destination, need_reference=False, what="--to", digest_ok=False)
    # A pinned `repo:tag@sha256:...` copies that digest and names it by its tag.
    t = ctx.client.transfers.start(
        source_endpoint=src.endpoint, source_repository=src.repository,
        source_reference=src.reference, destination_endpoint=dst.endpoint,
        destination_repository=dst.repository,
        destination_tag=dst.tag or (src.tag if src.digest else ""),
        platforms=a.platform or (), fail_if_tag_exists=a.fail_if_tag_exists,
        idempotency_key=a.idempotency_key or "",
        copy_referrers=policyfields.referrer_kinds(a.copy_referrers or ()),
    )
    if a.watch:
        if not ctx.out.machine:
            ctx.out.message(f"transfer {t.id} started")
        return _watch(ctx, t.id)
    if ctx.out.machine:
        ctx.out.data(t)
    else:
        ctx.out.message(f"transfer {t.id} started; follow it with: mirrorctl transfer watch {t.id}")
    return 0


def list_(ctx: Context) -> int:
    a = ctx.args
    items = []
    for t in ctx.client.transfers.iter(
        states=a.state or (), destination_endpoint=a.endpoint or "", repository=a.repository or ""
    ):
        items.append(t)
        if a.limit and len(items) >= a.limit:
            break
    ctx.out.rows(items, COLUMNS, wide=WIDE, empty="no transfers")
    return 0


def show(ctx: Context) -> int:
    t = ctx.client.transfers.get(ctx.args.id)
    if ctx.out.machine:
        ctx.out.data(t)
        return 0
    rows: list[tuple[str, object]] = [
        ("id", t.id), ("state", enum_name(transfer_pb2.Transfer.State, t.state)),
        ("message", t.message), ("source", COLUMNS[2][1](t)), ("destination", COLUMNS[3][1](t)),
        ("digest", t.digest), ("media type", t.media_type),
        ("bytes", f"{human_bytes(t.bytes_done)} copied, {human_bytes(t.bytes_skipped)} already "
                  f"there, of {human_bytes(t.bytes_total)}"),
        ("blobs", f"{t.blobs_done} copied, {t.blobs_skipped} skipped, {t.blobs_mounted} mounted, "
                  f"of {t.blobs_total}"),
        ("manifests", f"{t.manifests_done}/{t.manifests_total}"), ("attempts", t.attempts),
        ("created", when(t.create_time)), ("started", when(t.start_time)),
        ("ended", when(t.end_time)), ("next attempt", when(t.next_attempt_time)),
        ("referrers", _referrers(t) or "none"),
    ]
    ctx.out.record(t, [(k, const(v)) for k, v in rows])
    return 0


def watch(ctx: Context) -> int:
    return _watch(ctx, ctx.args.id)


def cancel(ctx: Context) -> int:
    t = ctx.client.transfers.cancel(ctx.args.id)
    if ctx.out.machine:
        ctx.out.data(t)
    else:
        ctx.out.message(summary(t))
    return 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    grp = command(sub, "transfer", help="copy images between endpoints and follow the jobs",
                  common=common, examples="  mirrorctl transfer list --state running")
    s = grp.add_subparsers(title="commands", metavar="COMMAND")
    p = command(s, "start", help="start copying an image", func=start, common=common, examples=(
        "  mirrorctl transfer start dev/team/app:1.4 --to qa/team/app --watch\n"
        "  mirrorctl transfer start dev/team/app:1.4 --to qa/team/app:1.4-qa "
        "--platform linux/amd64\n"
        "  mirrorctl transfer start dev/team/app@sha256:DIGEST --to qa/team/app:1.4\n"
        "  mirrorctl transfer start dev/team/app:1.4@sha256:DIGEST --to qa/team/app  "
        "# that digest, tagged 1.4"))
    p.add_argument("source", metavar="ENDPOINT/REPOSITORY:TAG|@sha256:DIGEST")
    p.add_argument("--to", dest="destination", required=True,
                   metavar="ENDPOINT/REPOSITORY[:TAG]")
    p.add_argument("--platform", action="append", help="copy only this platform (repeatable)")
    p.add_argument("--copy-referrers", action="append", metavar="KIND[,KIND]",
                   help="also copy the image's referrers after it: "
                   + ", ".join(policyfields.REFERRER_KINDS) + " (repeatable)")
    p.add_argument("--fail-if-tag-exists", action="store_true",
                   help="fail when the destination tag holds another image")
    p.add_argument("--idempotency-key", help="a retried start with this key returns the same job")
    p.add_argument("--watch", action="store_true", help="follow the progress until it ends")
    p = command(s, "list", help="list transfers", func=list_, common=common,
                examples="  mirrorctl transfer list --state running --state waiting\n"
                "  mirrorctl transfer list --repository team/app -o json")
    p.add_argument("--state", action="append",
                   choices=enums.choices(transfer_pb2.Transfer.State.DESCRIPTOR))
    p.add_argument("--endpoint", help="only transfers to this destination endpoint")
    p.add_argument("--repository", help="only transfers from or to this repository")
    p.add_argument("--limit", type=int, default=0, help="show at most N")
    p = command(s, "show", help="show one transfer", func=show, common=common,
                examples="  mirrorctl transfer show ID")
    p.add_argument("id")
    p = command(s, "watch", help="follow a transfer: bytes, blobs, rate, time left", func=watch,
                common=common, examples=(
                    "  mirrorctl transfer watch ID\n"
                    "  mirrorctl transfer watch ID -o json   # one JSON object per line\n"
                    "exits 0 when the transfer is done, 1 when it failed or was canceled"))
    p.add_argument("id")
    p = command(s, "cancel", help="cancel a transfer", func=cancel, common=common,
                examples="  mirrorctl transfer cancel ID")
    p.add_argument("id")
