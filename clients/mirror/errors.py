"""Exceptions raised by the SDK: one class per gRPC status code, with decoded google.rpc details."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.protobuf import message as pb_message
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request (google.rpc.BadRequest)."""

    field: str
    description: str


@dataclass(frozen=True)
class PreconditionViolation:
    """One unmet precondition (google.rpc.PreconditionFailure)."""

    type: str
    subject: str
    description: str


@dataclass(frozen=True)
class ErrorInfo:
    """Machine-readable reason (google.rpc.ErrorInfo)."""

    reason: str
    domain: str
    metadata: dict[str, str] = field(default_factory=dict)


class MirrorError(Exception):
    """A failed call: the gRPC code, the server's message and the decoded details."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        field_violations: list[FieldViolation] | None = None,
        precondition_violations: list[PreconditionViolation] | None = None,
        error_info: ErrorInfo | None = None,
        details: list[pb_message.Message] | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.field_violations = field_violations or []
        self.precondition_violations = precondition_violations or []
        self.error_info = error_info
        # Every detail message decoded (including kinds this SDK has no shortcut for).
        self.details = details or []

    @property
    def reason(self) -> str:
        """The machine-readable reason of the error's google.rpc.ErrorInfo
        (`TARGET_COLLISION`, `ENDPOINT_NOT_FOUND`...); empty when the server sent none."""
        return self.error_info.reason if self.error_info else ""

    @property
    def retry_delay(self) -> float | None:
        """Seconds the server asked the caller to wait before retrying (google.rpc.RetryInfo),
        or None when it sent no RetryInfo."""
        for d in self.details:
            if isinstance(d, error_details_pb2.RetryInfo):
                return max(0.0, d.retry_delay.ToTimedelta().total_seconds())
        return None

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class Cancelled(MirrorError):
    """The call was cancelled (CANCELLED), usually by the caller or its deadline."""

    code = grpc.StatusCode.CANCELLED


class Unknown(MirrorError):
    """The call failed without a more precise code (UNKNOWN)."""

    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(MirrorError):
    """The request is wrong (INVALID_ARGUMENT): a rule that does not compile, a bad
    template or field; `field_violations` names each bad field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(MirrorError):
    """The call did not finish within its timeout (DEADLINE_EXCEEDED)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(MirrorError):
    """The policy, endpoint, run, transfer or key named does not exist (NOT_FOUND)."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(MirrorError):
    """Another object holds that name, URL or alias already (ALREADY_EXISTS)."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(MirrorError):
    """The token's role may not make this call (PERMISSION_DENIED), e.g. a read token
    asking for a change."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(MirrorError):
    """Refused before doing anything (RESOURCE_EXHAUSTED): a rate limit, a busy server or
    a full volume; `retry_delay` says how long to wait when the server sent one."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(MirrorError):
    """The request is valid but the system's state refuses it (FAILED_PRECONDITION):
    an unknown or unwritable target endpoint, a key still named by a rule;
    `precondition_violations` and `reason` say which."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(MirrorError):
    """A concurrent change came first (ABORTED): the etag given is stale; read the object
    again and retry."""

    code = grpc.StatusCode.ABORTED


class OutOfRange(MirrorError):
    """A value outside the range the call accepts (OUT_OF_RANGE), e.g. a page token."""

    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(MirrorError):
    """The server has no such method (UNIMPLEMENTED): an older server, or the service is
    not running behind this address."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(MirrorError):
    """The server failed (INTERNAL): a bug; its log has the details."""

    code = grpc.StatusCode.INTERNAL


class Unavailable(MirrorError):
    """The server cannot be reached or is stopping (UNAVAILABLE); safe to retry later."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(MirrorError):
    """Data was lost or corrupted (DATA_LOSS)."""

    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(MirrorError):
    """No token, or one the server does not know (UNAUTHENTICATED)."""

    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[MirrorError]] = {
    cls.code: cls
    for cls in (
        Cancelled, Unknown, InvalidArgument, DeadlineExceeded, NotFound, AlreadyExists,
        PermissionDenied, ResourceExhausted, FailedPrecondition, Aborted, OutOfRange,
        Unimplemented, Internal, Unavailable, DataLoss, Unauthenticated,
    )
}

_DETAIL_TYPES: tuple[type[pb_message.Message], ...] = (
    error_details_pb2.BadRequest,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.ErrorInfo,
    error_details_pb2.ResourceInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.Help,
    error_details_pb2.QuotaFailure,
    error_details_pb2.LocalizedMessage,
    error_details_pb2.DebugInfo,
)


def rate_limit_wait(err: MirrorError, budget: float) -> float | None:
    """How long to wait before retrying a call refused with `err`, within `budget` seconds:
    only a RESOURCE_EXHAUSTED refusal carrying a RetryInfo (a rate limit or a busy server,
    refused before doing anything) is retried, and only when the wait it asks for fits."""
    if not isinstance(err, ResourceExhausted) or budget <= 0:
        return None
    delay = err.retry_delay
    if delay is None or delay > budget:
        return None
    return delay


def error_class(code: grpc.StatusCode) -> type[MirrorError]:
    """The MirrorError subclass raised for a status code."""
    return _BY_CODE.get(code, MirrorError)


def from_rpc_error(err: grpc.RpcError) -> MirrorError:
    """Turn a grpc (sync or aio) RpcError into the matching MirrorError subclass."""
    code: grpc.StatusCode = err.code()  # type: ignore[attr-defined]
    message: str = err.details() or ""  # type: ignore[attr-defined]
    decoded: list[pb_message.Message] = []
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except ValueError:
        # A status whose code or message disagrees with the trailers: keep what the call says.
        status = None
    if status is not None:
        for any_msg in status.details:
            for kind in _DETAIL_TYPES:
                if any_msg.Is(kind.DESCRIPTOR):
                    msg = kind()
                    any_msg.Unpack(msg)
                    decoded.append(msg)
                    break
    fields: list[FieldViolation] = []
    preconditions: list[PreconditionViolation] = []
    info: ErrorInfo | None = None
    for msg in decoded:
        if isinstance(msg, error_details_pb2.BadRequest):
            fields += [FieldViolation(v.field, v.description) for v in msg.field_violations]
        elif isinstance(msg, error_details_pb2.PreconditionFailure):
            preconditions += [
                PreconditionViolation(v.type, v.subject, v.description) for v in msg.violations
            ]
        elif isinstance(msg, error_details_pb2.ErrorInfo):
            info = ErrorInfo(msg.reason, msg.domain, dict(msg.metadata))
    cls = error_class(code)
    return cls(
        message,
        code=code,
        field_violations=fields,
        precondition_violations=preconditions,
        error_info=info,
        details=decoded,
    )
