"""Reading form fields into SDK arguments (endpoints) with the errors a person can fix."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp.web_request import FileField
from mirror.v1 import transfer_pb2


def text(form: Mapping[str, Any], key: str) -> str:
    value = form.get(key, "")
    return value.strip() if isinstance(value, str) else ""


def checked(form: Mapping[str, Any], key: str) -> bool:
    return text(form, key) in ("on", "true", "1")


def ca_pem(form: Mapping[str, Any]) -> str:
    """The CA certificate: an uploaded file wins over the pasted text."""
    upload = form.get("ca_file")
    if isinstance(upload, FileField):
        data = upload.file.read(256 * 1024)
        if data.strip():
            return data.decode("utf-8", errors="replace").strip() + "\n"
    pasted = text(form, "ca_pem")
    return pasted + "\n" if pasted else ""


def aliases(form: Mapping[str, Any]) -> list[str]:
    return [a.strip() for a in text(form, "aliases").replace("\n", ",").split(",") if a.strip()]


def endpoint_fields(form: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Endpoint settings from a form (keys optionally prefixed, as in New mirror's "new
    registry" part). Secrets are included only when typed: empty keeps the stored one."""
    sub = {k[len(prefix):]: v for k, v in form.items() if k.startswith(prefix)} if prefix else form
    out: dict[str, Any] = {
        "url": text(sub, "url"),
        "username": text(sub, "username"),
        "ca_pem": ca_pem(sub),
        "insecure_skip_verify": checked(sub, "insecure_skip_verify"),
        "scan_on_push": checked(sub, "scan_on_push"),
        "aliases": aliases(sub),
    }
    for key in ("secret", "webhook_secret"):  # write-only: only when typed
        value = sub.get(key, "")
        if isinstance(value, str) and value:
            out[key] = value
    for key, conv in (("max_concurrency", int), ("requests_per_second", float)):
        raw = text(sub, key)
        if raw:
            try:
                out[key] = conv(raw)
            except ValueError:
                raise FormError(key, f"{key.replace('_', ' ')} must be a number") from None
    return out


def endpoint_message(name: str, fields: Mapping[str, Any]) -> transfer_pb2.Endpoint:
    msg = transfer_pb2.Endpoint(name=name)
    for key, value in fields.items():
        if key == "aliases":
            msg.aliases.extend(value)
        else:
            setattr(msg, key, value)
    return msg


class FormError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
