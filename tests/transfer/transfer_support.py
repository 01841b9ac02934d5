"""Helpers of the transfer service tests: the served service and rpc error details."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status
from mirror.v1 import transfer_pb2, transfer_pb2_grpc

from servicekit.server import RunningServer
from transfer_service.servicer import TransferServicer


@dataclass
class Served:
    servicer: TransferServicer
    server: RunningServer
    channel: aio.Channel
    stub: transfer_pb2_grpc.TransferServiceStub
    data: Path
    stopped: bool = False


ServeFn = Callable[..., Awaitable[Served]]


async def stop_served(s: Served) -> None:
    """Stop the server and the worker (once)."""
    if s.stopped:
        return
    s.stopped = True
    await s.channel.close()
    await s.server.stop(0)
    await s.servicer.stop()


def rpc_details(err: aio.AioRpcError) -> tuple[grpc.StatusCode, list[tuple[str, str]], list[Any]]:
    """(code, BadRequest field violations, PreconditionFailure violations) of a failed call."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    fields: list[tuple[str, str]] = []
    preconditions: list[Any] = []
    for d in status.details if status else []:
        if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            d.Unpack(br)
            fields += [(v.field, v.description) for v in br.field_violations]
        if d.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            pf = error_details_pb2.PreconditionFailure()
            d.Unpack(pf)
            preconditions += list(pf.violations)
    return err.code(), fields, preconditions


def endpoint_msg(name: str, url: str = "", **kw: Any) -> transfer_pb2.Endpoint:
    return transfer_pb2.Endpoint(name=name, url=url, **kw)
