"""`mirrorctl status`: the health of every service, via the standard gRPC health service."""

from __future__ import annotations

import argparse

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mirror.cli.context import EXIT_SERVER, Context
from mirror.cli.parsing import command

SERVICES = (
    "mirror.v1.PolicyService",
    "mirror.v1.TransferService",
    "mirror.v1.GatewayService",
    "mirror.v1.ScanService",
)


def status(ctx: Context) -> int:
    stub = health_pb2_grpc.HealthStub(ctx.channel())
    rows = []
    healthy = True
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
        healthy = healthy and state == "serving"
        rows.append({"service": name, "status": state})
    ctx.out.rows(rows, [("SERVICE", lambda r: r["service"]), ("STATUS", lambda r: r["status"])],
                 title=f"mirror at {ctx.address}")
    if all(r["status"].startswith("unreachable") for r in rows):
        ctx.out.err.print(f"hint: nothing answers at {ctx.address}: is the server running? "
                          "set --address or MIRROR_ADDRESS", highlight=False, markup=False)
    return 0 if healthy else EXIT_SERVER


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    command(sub, "status", help="health of every service (grpc.health.v1)", func=status,
            common=common, examples=(
                "  mirrorctl status\n  mirrorctl --address mirror.internal:50051 --tls status\n"
                "exits 1 when a service is not serving"))
