"""API errors raised by servicers and turned into gRPC status with google.rpc details.

The message and the details travel in trailing metadata (grpc-message, and
grpc-status-details-bin in base64), which clients refuse beyond 8-16 KiB in total: the client
would then see RESOURCE_EXHAUSTED instead of the real status. So the message and the violation
lists are cut to a budget well below that, keeping the first entries and saying how many more
there were.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "image-mirror.dev"
# UTF-8 bytes of the status message (sent twice: as grpc-message, percent-encoded, which can
# triple it, and inside the details).
MAX_MESSAGE_BYTES = 1024
# Serialized bytes of the violations (base64 adds a third): with the message, the trailers
# stay under grpc's default 8 KiB soft limit on received metadata.
MAX_VIOLATION_BYTES = 3072
MAX_DESCRIPTION_BYTES = 512


def _cut(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, marked with an ellipsis when cut."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode("utf-8", "ignore") + "\u2026"


def _fit(sizes: Sequence[int], budget: int) -> int:
    """How many of the first items fit in `budget` bytes (at least one, if there is one)."""
    used = 0
    for count, size in enumerate(sizes):
        used += size + 3  # tag and length of the repeated field
        if used > budget and count > 0:
            return count
    return len(sizes)


def _more(dropped: int) -> str:
    return f"{dropped} more error{'s' if dropped != 1 else ''} not shown"


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
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field_violations = list(field_violations)
        self.precondition_violations = list(precondition_violations)
        self.reason = reason
        self.metadata = dict(metadata or {})
        # Seconds the client should wait before retrying (google.rpc.RetryInfo).
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields: the default Exception pickling would lose them (errors raised
        # in a worker process come back pickled).
        return (_restore, (self.code, self.message, {
            "field_violations": self.field_violations,
            "precondition_violations": self.precondition_violations,
            "reason": self.reason, "metadata": self.metadata, "retry_after": self.retry_after,
        }))

    def details(self) -> list[any_pb2.Any]:
        """The google.rpc detail messages, packed; violation lists cut to the metadata budget
        (the first ones kept, then one entry saying how many more there were)."""
        out: list[any_pb2.Any] = []
        if self.field_violations:
            fvs = [
                error_details_pb2.BadRequest.FieldViolation(
                    field=_cut(f, MAX_DESCRIPTION_BYTES),
                    description=_cut(d, MAX_DESCRIPTION_BYTES),
                )
                for f, d in self.field_violations
            ]
            keep = _fit([v.ByteSize() for v in fvs], MAX_VIOLATION_BYTES)
            if keep < len(fvs):
                fvs[keep:] = [error_details_pb2.BadRequest.FieldViolation(
                    field=fvs[keep - 1].field, description=_more(len(fvs) - keep))]
            out.append(_pack(error_details_pb2.BadRequest(field_violations=fvs)))
        if self.precondition_violations:
            pvs = [
                error_details_pb2.PreconditionFailure.Violation(
                    type=_cut(t, MAX_DESCRIPTION_BYTES), subject=_cut(s, MAX_DESCRIPTION_BYTES),
                    description=_cut(d, MAX_DESCRIPTION_BYTES),
                )
                for t, s, d in self.precondition_violations
            ]
            keep = _fit([v.ByteSize() for v in pvs], MAX_VIOLATION_BYTES)
            if keep < len(pvs):
                pvs[keep:] = [error_details_pb2.PreconditionFailure.Violation(
                    type=pvs[keep - 1].type, description=_more(len(pvs) - keep))]
            out.append(_pack(error_details_pb2.PreconditionFailure(violations=pvs)))
        if self.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(max(0, int(self.retry_after * 1e9)))
            out.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
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
            code=_CODE_NUMBERS[self.code], message=self.wire_message(), details=self.details()
        )
        return rpc_status.to_status(st)

    def wire_message(self) -> str:
        """The message as sent: cut to MAX_MESSAGE_BYTES, saying so."""
        if len(self.message.encode("utf-8")) <= MAX_MESSAGE_BYTES:
            return self.message
        note = " (message cut; the details list the first errors)"
        return _cut(self.message, MAX_MESSAGE_BYTES - len(note)) + note


def _restore(code: grpc.StatusCode, message: str, fields: dict[str, Any]) -> ApiError:
    return ApiError(code, message, **fields)


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


def resource_exhausted(
    message: str, *, retry_after: float | None = None, reason: str = ""
) -> ApiError:
    """RESOURCE_EXHAUSTED; `retry_after` seconds become a google.rpc.RetryInfo detail."""
    return ApiError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, message, retry_after=retry_after, reason=reason
    )
