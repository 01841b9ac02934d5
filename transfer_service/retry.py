"""Which copy failures are worth retrying, and how to describe them without leaking secrets.

The classification is the code base's one retry policy (`servicekit.retry`); this module
only adds the job-message and metric views of an error.
"""

from __future__ import annotations

from registry_client.excerpt import excerpt
from servicekit.errors import ApiError
from servicekit.retry import Backoff, is_retryable, retry_after_hint

__all__ = ["Backoff", "describe_error", "is_retryable", "registry_error_code", "retry_after_hint"]

# A job message is read by read-only callers: one bounded line.
MESSAGE_CHARS = 600


def describe_error(exc: BaseException) -> str:
    """A one-line, bounded message for the job's `message` field."""
    if isinstance(exc, ApiError):
        return excerpt(exc.message, MESSAGE_CHARS)
    text = excerpt(str(exc), MESSAGE_CHARS)
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
