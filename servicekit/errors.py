"""API errors raised by servicers and turned into gRPC status with google.rpc details."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "image-mirror.dev"


class ApiError(Exception):
    """An error with a gRPC status code and structured google.rpc details."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        field_violations: Sequence[tuple[str, str]] = (),
        precondition_violations: Sequence[tuple[str, str, str]] = (),
        reason: str = "",
        metadata: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field_violations = list(field_violations)
        self.precondition_violations = list(precondition_violations)
        self.reason = reason
        self.metadata = dict(metadata or {})

    def details(self) -> list[any_pb2.Any]:
        """The google.rpc detail messages, packed."""
        out: list[any_pb2.Any] = []
        if self.field_violations:
            br = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in self.field_violations
                ]
            )
            out.append(_pack(br))
        if self.precondition_violations:
            pf = error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type=t, subject=s, description=d
                    )
                    for t, s, d in self.precondition_violations
                ]
            )
            out.append(_pack(pf))
        if self.reason:
            out.append(
                _pack(
                    error_details_pb2.ErrorInfo(
                        reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
                    )
                )
            )
        return out

    def to_status(self) -> grpc.Status:
        """A grpc.Status carrying the code, message and details (grpc-status-details-bin)."""
        st = status_pb2.Status(
            code=_CODE_NUMBERS[self.code], message=self.message, details=self.details()
        )
        return rpc_status.to_status(st)


def _pack(msg: object) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)  # type: ignore[arg-type]
    return a


_CODE_NUMBERS = {c: c.value[0] for c in grpc.StatusCode}
assert _CODE_NUMBERS[grpc.StatusCode.INVALID_ARGUMENT] == code_pb2.INVALID_ARGUMENT


def invalid_argument(
    message: str, violations: Iterable[tuple[str, str]] = (), reason: str = ""
) -> ApiError:
    """INVALID_ARGUMENT with BadRequest field violations (field, description)."""
    v = list(violations)
    return ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        message,
        field_violations=v,
        reason=reason,
    )


def not_found(message: str, reason: str = "NOT_FOUND") -> ApiError:
    return ApiError(grpc.StatusCode.NOT_FOUND, message, reason=reason)


def already_exists(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.ALREADY_EXISTS, message, reason="ALREADY_EXISTS")


def failed_precondition(
    message: str, violations: Iterable[tuple[str, str, str]] = (), reason: str = ""
) -> ApiError:
    """FAILED_PRECONDITION with PreconditionFailure violations (type, subject, description)."""
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        message,
        precondition_violations=list(violations),
        reason=reason,
    )


def aborted(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.ABORTED, message, reason="ETAG_MISMATCH")


def permission_denied(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.PERMISSION_DENIED, message)


def unauthenticated(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.UNAUTHENTICATED, message)


def unavailable(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.UNAVAILABLE, message)


def resource_exhausted(message: str) -> ApiError:
    return ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
