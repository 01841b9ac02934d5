"""Asks the transfer service whether a policy's target repository accepts pushes.

The policy service holds no credentials: the transfer service owns the endpoints and tests
them (`TestConnection(check_push=True)`), and the policy service only reads the verdict.
"""

from __future__ import annotations

import logging
from typing import Protocol

import grpc
from grpc import aio
from mirror.v1 import transfer_pb2, transfer_pb2_grpc

from servicekit import errors

log = logging.getLogger("policy_service.push_check")

CHECK_TIMEOUT_SECONDS = 30.0


class PushChecker(Protocol):
    """Raises an ApiError (FAILED_PRECONDITION, ...) when the target cannot be pushed to."""

    async def check(self, endpoint: str, repository: str) -> None: ...


class GrpcPushChecker:
    """Calls mirror.v1.TransferService/TestConnection over a channel to the transfer service."""

    def __init__(self, channel: aio.Channel, timeout: float = CHECK_TIMEOUT_SECONDS) -> None:
        self._stub = transfer_pb2_grpc.TransferServiceStub(channel)
        self._timeout = timeout

    async def check(self, endpoint: str, repository: str) -> None:
        subject = f"endpoints/{endpoint}/repositories/{repository}"
        try:
            resp = await self._stub.TestConnection(
                transfer_pb2.TestConnectionRequest(
                    endpoint=endpoint, repository=repository, check_push=True
                ),
                timeout=self._timeout,
            )
        except grpc.RpcError as err:
            code = err.code()  # type: ignore[attr-defined]
            detail = err.details() or ""  # type: ignore[attr-defined]
            if code == grpc.StatusCode.NOT_FOUND:
                raise errors.failed_precondition(
                    f"target endpoint {endpoint!r} does not exist in the transfer service",
                    [("ENDPOINT_EXISTS", f"endpoints/{endpoint}", detail or "no such endpoint")],
                    reason="TARGET_ENDPOINT_NOT_FOUND",
                ) from err
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise errors.invalid_argument(
                    f"the transfer service refused the target: {detail}",
                    [("policy.target", detail)],
                ) from err
            log.warning("push check of %s failed: %s %s", subject, code, detail)
            raise errors.unavailable(
                f"cannot check push permission on the target: transfer service answered "
                f"{code.name}: {detail}"
            ) from err
        failed = [
            c for c in resp.checks if c.result == transfer_pb2.ConnectionCheck.RESULT_FAILED
        ]
        if resp.ok and not failed:
            return
        violations = [
            (transfer_pb2.ConnectionCheck.Step.Name(c.step), subject, c.message) for c in failed
        ] or [("TEST_CONNECTION", subject, "the transfer service reported the check not ok")]
        first = violations[0]
        raise errors.failed_precondition(
            f"target {endpoint}/{repository} is not pushable: {first[0]} failed: {first[2]}",
            violations,
            reason="TARGET_NOT_PUSHABLE",
        )
