"""Which copy failures are worth retrying, and how to describe them without leaking secrets."""

from __future__ import annotations

import asyncio

from servicekit.errors import ApiError


def is_retryable(exc: BaseException) -> bool:
    """True for transient failures (connection errors, timeouts, 408/429/5xx, digest mismatch
    in transit); False for permanent ones (401/403/404, tag exists, bad input, bugs)."""
    from registry_client import errors as rerr

    if isinstance(exc, ApiError):
        return False  # e.g. an endpoint deleted while its job waited
    if isinstance(exc, (rerr.AuthenticationError, rerr.PermissionDenied, rerr.NotFound)):
        return False
    if isinstance(exc, rerr.TlsError):
        return False  # a certificate problem needs an operator, not a retry
    if isinstance(exc, (rerr.ConnectError, rerr.TooManyRequests, rerr.DigestMismatch)):
        return True
    if isinstance(exc, rerr.RegistryError):
        status = int(getattr(exc, "status", 0) or 0)
        return status == 0 or status in (408, 429) or status >= 500
    return isinstance(exc, (OSError, asyncio.TimeoutError, ConnectionError))


def describe_error(exc: BaseException) -> str:
    """A one-line message for the job's `message` field."""
    if isinstance(exc, ApiError):
        return exc.message
    text = str(exc).strip()
    kind = type(exc).__name__
    return f"{kind}: {text}" if text else kind


def registry_error_code(exc: BaseException) -> str:
    """The label for the REGISTRY_ERRORS metric, or '' when the error is not a registry's."""
    from registry_client import errors as rerr

    if not isinstance(exc, rerr.RegistryError):
        return ""
    code = getattr(exc, "code", "") or ""
    status = getattr(exc, "status", 0) or 0
    return str(code or status or type(exc).__name__)
