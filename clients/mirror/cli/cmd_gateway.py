"""`mirrorctl notify` and `mirrorctl reconcile`: for CI systems and registries without
webhooks."""

from __future__ import annotations

import argparse

from mirror.cli.context import EXIT_SERVER, CliError, Context
from mirror.cli.parsing import command, image_ref


def notify(ctx: Context) -> int:
    a = ctx.args
    ref = image_ref(f"{a.endpoint}/{a.image}", what="image")
    if not ref.tag:
        raise CliError(f"{a.image!r} names no tag: policies act on pushed tags",
                       hint="give REPOSITORY:TAG (or REPOSITORY:TAG@sha256:DIGEST)")
    resp = ctx.client.gateway.notify_push(
        endpoint=ref.endpoint, repository=ref.repository, tag=ref.tag, digest=ref.digest,
        event_id=a.event_id or "",
    )
    if ctx.out.machine:
        ctx.out.data(resp)
    elif resp.duplicate:
        ctx.out.message(f"event {resp.event_id} was already reported; nothing new to do")
    else:
        ctx.out.message(f"push of {ref.repository}:{ref.tag} on {ref.endpoint} reported "
                        f"(event {resp.event_id}); follow it with: mirrorctl runs list")
    return 0


def reconcile(ctx: Context) -> int:
    from mirror.cli.cmd_policy import print_sweep, resolve

    a = ctx.args
    policy = resolve(ctx.client, a.policy) if a.policy else None
    resp = ctx.client.gateway.reconcile(policy.id if policy else "")
    if ctx.out.machine:
        ctx.out.data(resp)
        return EXIT_SERVER if resp.errors else 0
    return print_sweep(ctx, policy.name if policy else "reconcile", resp)


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = command(sub, "notify", help="report a push (registries and CI systems without webhooks)",
                func=notify, common=common, examples=(
                    "  mirrorctl notify dev team/website:1.4-stable\n"
                    "  mirrorctl notify dev team/website:1.4-stable@sha256:DIGEST "
                    "--event-id ci-build-812\n"
                    "the policies reading that endpoint and repository act on it as on a "
                    "webhook event"))
    p.add_argument("endpoint", metavar="ENDPOINT", help="the endpoint that was pushed to")
    p.add_argument("image", metavar="REPOSITORY:TAG[@sha256:DIGEST]",
                   help="what was pushed (the digest is resolved from the tag when left out)")
    p.add_argument("--event-id", help="an id of yours; the same id again is a duplicate")
    p = command(sub, "reconcile", help="act on pushes whose events were lost (never older tags)",
                func=reconcile, common=common, examples=(
                    "  mirrorctl reconcile\n  mirrorctl reconcile --policy promote-stable\n"
                    "fills in events missed since each policy was created or last applied; "
                    "exits 1 when some endpoint could not be read"))
    p.add_argument("--policy", metavar="ID-or-NAME", help="only this policy (default: all)")
