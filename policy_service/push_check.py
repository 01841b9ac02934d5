"""Asks the transfer service about endpoints: whether a policy's target repository accepts
pushes, whether a source endpoint exists, and which endpoints are registered.

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
    """The transfer service as the policy service sees it; failures are ApiErrors."""

    async def check(self, endpoint: str, repository: str) -> None:
        """Raises FAILED_PRECONDITION (...) when the target cannot be pushed to."""

    async def require_endpoint(self, endpoint: str) -> None:
        """Raises FAILED_PRECONDITION reason ENDPOINT_NOT_FOUND when `endpoint` is unknown."""

    async def endpoint_names(self) -> list[str]:
        """Every registered endpoint's name; UNAVAILABLE while the service cannot answer."""


class GrpcPushChecker:
    """Calls mirror.v1.TransferService/TestConnection over a channel to the transfer service."""

    def __init__(self, channel: aio.Channel, timeout: float = CHECK_TIMEOUT_SECONDS) -> None:
        self._stub = transfer_pb2_grpc.TransferServiceStub(channel)
        self._timeout = timeout

    def _unavailable(self, what: str, err: grpc.RpcError) -> errors.ApiError:
        code = err.code()  # type: ignore[attr-defined]
        detail = err.details() or ""  # type: ignore[attr-defined]
        log.warning("%s failed: %s %s", what, code, detail)
        return errors.unavailable(
            f"cannot {what}: transfer service answered {code.name}: {detail}"
        )

    async def require_endpoint(self, endpoint: str) -> None:
        try:
            await self._stub.GetEndpoint(
                transfer_pb2.GetEndpointRequest(name=endpoint), timeout=self._timeout
            )
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                raise errors.failed_precondition(
                    f"source endpoint {endpoint!r} does not exist in the transfer service",
                    [("ENDPOINT_EXISTS", f"endpoints/{endpoint}", "no such endpoint")],
                    reason="ENDPOINT_NOT_FOUND",
                ) from err
            raise self._unavailable(f"check that endpoint {endpoint!r} exists", err) from err

    async def endpoint_names(self) -> list[str]:
        names: list[str] = []
        token = ""
        while True:
            try:
                resp = await self._stub.ListEndpoints(
                    transfer_pb2.ListEndpointsRequest(page_size=1000, page_token=token),
                    timeout=self._timeout,
                )
            except grpc.RpcError as err:
                raise self._unavailable("list the endpoints", err) from err
            names += [e.name for e in resp.endpoints]
            token = resp.next_page_token
            if not token:
                return names

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
