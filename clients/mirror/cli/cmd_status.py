"""`mirrorctl status`: the health of every service (grpc.health.v1), and the push events that
no endpoint places, with the alias that would place them."""

from __future__ import annotations

import argparse
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mirror import errors
from mirror.cli.context import EXIT_SERVER, Context
from mirror.cli.output import to_data, when
from mirror.cli.parsing import command
from mirror.v1 import gateway_pb2

SERVICES = (
    "mirror.v1.PolicyService",
    "mirror.v1.TransferService",
    "mirror.v1.GatewayService",
    "mirror.v1.ScanService",
)


def _health(ctx: Context) -> list[dict[str, str]]:
    stub = health_pb2_grpc.HealthStub(ctx.channel())
    rows = []
    for name in SERVICES:
        try:
            resp = stub.Check(
                health_pb2.HealthCheckRequest(service=name), timeout=5,
                metadata=ctx.client.metadata,
            )
            state = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status).lower()
        except grpc.RpcError as err:
            code = err.code()  # type: ignore[attr-defined]
            state = "not served here" if code == grpc.StatusCode.NOT_FOUND else (
                f"unreachable ({code.name.lower()})"
            )
        rows.append({"service": name, "status": state})
    return rows


def fix_command(ctx: Context, ev: gateway_pb2.UnplacedEvent) -> str:
    """The `endpoint update` that places such events: the endpoint's aliases plus the new one
    (--alias replaces the list, so the ones it has are repeated)."""
    if not (ev.suggested_endpoint and ev.suggested_alias):
        return ""
    try:
        have = list(ctx.client.transfers.get_endpoint(ev.suggested_endpoint).aliases)
    except errors.MirrorError:
        have = []
    aliases = [*(a for a in have if a != ev.suggested_alias), ev.suggested_alias]
    flags = " ".join(f"--alias {a}" for a in aliases)
    return f"mirrorctl endpoint update {ev.suggested_endpoint} {flags}"


def _unplaced(ctx: Context) -> tuple[list[gateway_pb2.UnplacedEvent] | None, str]:
    """The unplaced events, or None and why they cannot be shown."""
    try:
        return list(ctx.client.gateway.list_unplaced_events().events), ""
    except (errors.Unauthenticated, errors.PermissionDenied):
        return None, "unplaced push events not shown: they need a token (--token-file)"
    except errors.MirrorError as err:
        return None, f"unplaced push events not shown: {err.message or err.code.name}"


def status(ctx: Context) -> int:
    rows = _health(ctx)
    healthy = all(r["status"] == "serving" for r in rows)
    reachable = not all(r["status"].startswith("unreachable") for r in rows)
    events, why = _unplaced(ctx) if reachable else (None, "")
    fixes = [fix_command(ctx, e) for e in events or []]
    if ctx.out.machine:
        unplaced: list[Any] | None = None
        if events is not None:
            unplaced = [{**to_data(e), "fix": f} for e, f in zip(events, fixes, strict=True)]
        ctx.out.data({"services": rows, "unplaced_events": unplaced})
    else:
        ctx.out.rows(rows, [("SERVICE", lambda r: r["service"]),
                            ("STATUS", lambda r: r["status"])],
                     title=f"mirror at {ctx.address}")
        if events:
            pairs = list(zip(events, fixes, strict=True))
            ctx.out.rows(pairs, [
                ("HOSTS", lambda p: list(p[0].hosts)), ("REPOSITORY", lambda p: p[0].repository),
                ("LAST TAG", lambda p: p[0].tag), ("EVENTS", lambda p: p[0].count),
                ("LAST", lambda p: when(p[0].last_time)),
                ("PLACE THEM WITH", lambda p: p[1] or "add an endpoint for this registry"),
            ], title="push events no endpoint places (nothing acted on them)")
        elif why:
            ctx.out.err.print(why, highlight=False, markup=False)
    if not reachable:
        ctx.out.err.print(f"hint: nothing answers at {ctx.address}: is the server running? "
                          "set --address or MIRROR_ADDRESS", highlight=False, markup=False)
    return 0 if healthy else EXIT_SERVER


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    command(sub, "status", help="health of every service, and push events no endpoint places",
            func=status, common=common, examples=(
                "  mirrorctl status\n  mirrorctl --address mirror.internal:50051 --tls status\n"
                "  mirrorctl status -o json   # {services: [...], unplaced_events: [...]}\n"
                "a push to localhost:5000 is not placed when the endpoint is 127.0.0.1:5000: "
                "status prints the --alias that places it;\n"
                "exits 1 when a service is not serving"))
