"""Typed registry errors carrying the HTTP status and the registry's error code."""

from __future__ import annotations

import json
from typing import Any

from registry_client.excerpt import error_code, excerpt
from servicekit.retry import retryable_status

# Longest message kept: contexts (method, path, repository) plus a remote excerpt.
MESSAGE_CHARS = 600


class RegistryError(Exception):
    """A registry call failed. `code` is the registry error code (e.g. MANIFEST_UNKNOWN);
    `registry` the host[:port] that answered, when the transport knows it."""

    registry: str = ""
    # None: decided by the status (no answer at all, or 408/429/5xx); subclasses fix it.
    _retryable: bool | None = None

    def __init__(self, status: int = 0, code: str = "", message: str = "", detail: Any = None):
        self.status = status
        self.code = error_code(code)
        message = excerpt(message, MESSAGE_CHARS)
        self.message = message
        self.detail = detail
        code = self.code
        text = message or code or f"HTTP {status}"
        if code and message and code not in message:
            text = f"{code}: {message}"
        super().__init__(f"{text} (HTTP {status})" if status else text)

    @property
    def retryable(self) -> bool:
        """Worth another try (read by `servicekit.retry.is_retryable`)."""
        if self._retryable is not None:
            return self._retryable
        return self.status == 0 or retryable_status(self.status)


class ConnectError(RegistryError):
    """The registry could not be reached (refused, reset, DNS, timeout)."""

    _retryable = True


class Stalled(ConnectError):
    """The registry sent nothing for `idle_timeout` seconds in the middle of an answer."""


class TlsError(RegistryError):
    """TLS failed: unknown CA, wrong host name, or the server does not speak TLS."""

    _retryable = False


class AuthenticationError(RegistryError):
    """Credentials are missing or wrong."""

    _retryable = False


class PermissionDenied(RegistryError):
    """Authenticated but not allowed (403, DENIED, or a token without the needed scope)."""

    _retryable = False


class NotFound(RegistryError):
    """MANIFEST_UNKNOWN, BLOB_UNKNOWN, NAME_UNKNOWN, BLOB_UPLOAD_UNKNOWN or a plain 404."""

    _retryable = False


class DigestMismatch(RegistryError):
    """Content does not hash to the expected digest (or has the wrong size)."""

    _retryable = True


class TooManyRequests(RegistryError):
    """429 after every retry."""

    _retryable = True


class RetryAfterTooLong(RegistryError):
    """The registry asked to wait (Retry-After) longer than the configured cap: this attempt
    fails at once; `retry_after` (seconds) tells a scheduler when to come back."""

    _retryable = True

    def __init__(self, status: int, code: str, message: str, retry_after: float) -> None:
        super().__init__(status, code, message)
        self.retry_after = retry_after


class InvalidRequest(RegistryError):
    """The registry refused the request as invalid (NAME_INVALID, MANIFEST_INVALID, ...)."""

    _retryable = False


_NOT_FOUND_CODES = {"MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN", "BLOB_UPLOAD_UNKNOWN"}


def parse_error_body(body: bytes) -> tuple[str, str, Any]:
    """(code, message, detail) of the first error in a registry error body.

    Defensive: 2.8.2 answers some 4xx with plain text; anything unparsable becomes the message.
    Whatever the server sent, only a short excerpt (first line, no control characters) and a
    well-formed code come back; `detail` only when small.
    """
    text = excerpt(body[:4096].decode("utf-8", errors="replace"))
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "", text, None
    if isinstance(doc, dict):
        errs = doc.get("errors")
        if isinstance(errs, list) and errs and isinstance(errs[0], dict):
            first = errs[0]
            return (
                error_code(first.get("code", "")),
                excerpt(str(first.get("message", ""))),
                _small(first.get("detail")),
            )
        if "error" in doc:  # token servers: {"error": "...", "error_description": "..."}
            return "", excerpt(str(doc.get("error_description") or doc["error"])), None
    return "", text, None


def _small(detail: Any, limit: int = 1024) -> Any:
    """`detail` when its JSON is at most `limit` bytes (it is kept, never shown whole)."""
    try:
        return detail if len(json.dumps(detail)) <= limit else None
    except (TypeError, ValueError, RecursionError):
        return None


def error_for(status: int, body: bytes, context: str = "") -> RegistryError:
    """The typed error for an unexpected HTTP answer."""
    code, message, detail = parse_error_body(body)
    if context:
        message = f"{context}: {message}" if message else context
    cls: type[RegistryError]
    if status == 401:
        cls = AuthenticationError
    elif status == 403 or code == "DENIED":
        cls = PermissionDenied
    elif status == 404 or code in _NOT_FOUND_CODES:
        cls = NotFound
    elif status == 429 or code == "TOOMANYREQUESTS":
        cls = TooManyRequests
    elif code == "DIGEST_INVALID":
        cls = DigestMismatch
    elif 400 <= status < 500 and not retryable_status(status):  # 408 is a timeout
        cls = InvalidRequest
    else:
        cls = RegistryError
    return cls(status, code, message, detail)
