"""Small servicers for testing the security interceptors on a real gRPC server.

They stand in for the services only where the interceptor, not the service, is under test.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from grpc import aio
from mirror.v1 import policy_pb2, policy_pb2_grpc, transfer_pb2, transfer_pb2_grpc

from servicekit.errors import not_found

log = logging.getLogger("tests.security.servicer")


class PolicyStub(policy_pb2_grpc.PolicyServiceServicer):
    service_name = "mirror.v1.PolicyService"

    def __init__(self) -> None:
        self.created: list[policy_pb2.Policy] = []

    def mount(self, server: aio.Server) -> None:
        policy_pb2_grpc.add_PolicyServiceServicer_to_server(self, server)

    async def ListPolicies(self, request, context):  # type: ignore[no-untyped-def]
        log.info("listing policies")
        return policy_pb2.ListPoliciesResponse(policies=self.created)

    async def CreatePolicy(self, request, context):  # type: ignore[no-untyped-def]
        self.created.append(request.policy)
        return request.policy

    async def GetPolicy(self, request, context):  # type: ignore[no-untyped-def]
        raise not_found(f"policy {request.id!r} not found")


class TransferStub(transfer_pb2_grpc.TransferServiceServicer):
    service_name = "mirror.v1.TransferService"

    def mount(self, server: aio.Server) -> None:
        transfer_pb2_grpc.add_TransferServiceServicer_to_server(self, server)

    async def WatchTransfer(self, request, context) -> AsyncIterator[transfer_pb2.Transfer]:  # type: ignore[no-untyped-def]
        yield transfer_pb2.Transfer(id=request.id, state=transfer_pb2.Transfer.STATE_RUNNING)
        yield transfer_pb2.Transfer(id=request.id, state=transfer_pb2.Transfer.STATE_DONE)

    async def CancelTransfer(self, request, context):  # type: ignore[no-untyped-def]
        return transfer_pb2.Transfer(id=request.id, state=transfer_pb2.Transfer.STATE_CANCELED)
