"""Typed registry errors carrying the HTTP status and the registry's error code."""

from __future__ import annotations

import json
from typing import Any


class RegistryError(Exception):
    """A registry call failed. `code` is the registry error code (e.g. MANIFEST_UNKNOWN);
    `registry` the host[:port] that answered, when the transport knows it."""

    registry: str = ""

    def __init__(self, status: int = 0, code: str = "", message: str = "", detail: Any = None):
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        text = message or code or f"HTTP {status}"
        if code and message and code not in message:
            text = f"{code}: {message}"
        super().__init__(f"{text} (HTTP {status})" if status else text)


class ConnectError(RegistryError):
    """The registry could not be reached (refused, reset, DNS, timeout)."""


class TlsError(RegistryError):
    """TLS failed: unknown CA, wrong host name, or the server does not speak TLS."""


class AuthenticationError(RegistryError):
    """Credentials are missing or wrong."""


class PermissionDenied(RegistryError):
    """Authenticated but not allowed (403, DENIED, or a token without the needed scope)."""


class NotFound(RegistryError):
    """MANIFEST_UNKNOWN, BLOB_UNKNOWN, NAME_UNKNOWN, BLOB_UPLOAD_UNKNOWN or a plain 404."""


class DigestMismatch(RegistryError):
    """Content does not hash to the expected digest (or has the wrong size)."""


class TooManyRequests(RegistryError):
    """429 after every retry."""


class InvalidRequest(RegistryError):
    """The registry refused the request as invalid (NAME_INVALID, MANIFEST_INVALID, ...)."""


_NOT_FOUND_CODES = {"MANIFEST_UNKNOWN", "BLOB_UNKNOWN", "NAME_UNKNOWN", "BLOB_UPLOAD_UNKNOWN"}


def parse_error_body(body: bytes) -> tuple[str, str, Any]:
    """(code, message, detail) of the first error in a registry error body.

    Defensive: 2.8.2 answers some 4xx with plain text; anything unparsable becomes the message.
    """
    text = body[:2000].decode("utf-8", errors="replace").strip()
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return "", text, None
    if isinstance(doc, dict):
        errs = doc.get("errors")
        if isinstance(errs, list) and errs and isinstance(errs[0], dict):
            first = errs[0]
            return str(first.get("code", "")), str(first.get("message", "")), first.get("detail")
        if "error" in doc:  # token servers: {"error": "...", "error_description": "..."}
            return "", str(doc.get("error_description") or doc["error"]), None
    return "", text, None


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
    elif 400 <= status < 500:
        cls = InvalidRequest
    else:
        cls = RegistryError
    return cls(status, code, message, detail)
