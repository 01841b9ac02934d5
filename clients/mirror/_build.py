"""Request builders shared by the sync and asyncio clients (keyword arguments -> messages)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import field_mask_pb2, json_format, timestamp_pb2

from mirror.v1 import common_pb2, gateway_pb2, policy_pb2, scan_pb2, transfer_pb2

FactsArg = common_pb2.ImageFacts | Mapping[str, Any]

# Fields of Policy a caller may set; the rest are output only.
POLICY_FIELDS = (
    "name", "description", "source_repository", "rule", "target", "tag_template",
    "time_zone", "enabled",
)
ENDPOINT_FIELDS = (
    "url", "username", "secret", "ca_pem", "insecure_skip_verify", "max_concurrency",
    "requests_per_second", "scan_on_push", "aliases",
)


def facts(value: FactsArg) -> common_pb2.ImageFacts:
    """ImageFacts from a message or a JSON-like mapping ({"repository": ..., "tag": ...})."""
    if isinstance(value, common_pb2.ImageFacts):
        return value
    return json_format.ParseDict(dict(value), common_pb2.ImageFacts())


def timestamp(when: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if when is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when if when.tzinfo else when.replace(tzinfo=dt.UTC))
    return ts


def policy_message(
    policy: policy_pb2.Policy | None, fields: Mapping[str, Any]
) -> policy_pb2.Policy:
    """A Policy from a message and/or keyword fields (target given as endpoint + repository)."""
    out = policy_pb2.Policy()
    if policy is not None:
        out.CopyFrom(policy)
    for key, value in fields.items():
        if value is None:
            continue
        if key == "endpoint":
            out.target.endpoint = value
        elif key == "repository":
            out.target.repository = value
        elif key == "target":
            out.target.CopyFrom(value)
        else:
            setattr(out, key, value)
    return out


def policy_mask(fields: Mapping[str, Any]) -> field_mask_pb2.FieldMask:
    """The update mask naming each field given (endpoint/repository are target.*)."""
    paths = [
        f"target.{key}" if key in ("endpoint", "repository") else key
        for key, value in fields.items()
        if value is not None
    ]
    return field_mask_pb2.FieldMask(paths=paths)


def endpoint_message(
    endpoint: transfer_pb2.Endpoint | None, name: str | None, fields: Mapping[str, Any]
) -> transfer_pb2.Endpoint:
    out = transfer_pb2.Endpoint()
    if endpoint is not None:
        out.CopyFrom(endpoint)
    if name is not None:
        out.name = name
    for key, value in fields.items():
        if value is None:
            continue
        if key == "aliases":
            del out.aliases[:]
            out.aliases.extend(value)
        else:
            setattr(out, key, value)
    return out


def endpoint_mask(fields: Mapping[str, Any]) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=[k for k, v in fields.items() if v is not None])


def start_transfer(
    *,
    source_endpoint: str,
    source_repository: str,
    source_reference: str,
    destination_endpoint: str,
    destination_repository: str,
    destination_tag: str = "",
    platforms: Iterable[str] = (),
    fail_if_tag_exists: bool = False,
    idempotency_key: str = "",
) -> transfer_pb2.StartTransferRequest:
    return transfer_pb2.StartTransferRequest(
        source=common_pb2.ImageLocation(
            endpoint=source_endpoint, repository=source_repository, reference=source_reference
        ),
        destination=transfer_pb2.TransferDestination(
            endpoint=destination_endpoint, repository=destination_repository, tag=destination_tag
        ),
        options=transfer_pb2.TransferOptions(
            platforms=list(platforms), fail_if_tag_exists=fail_if_tag_exists
        ),
        idempotency_key=idempotency_key,
    )


def transfer_states(states: Iterable[int | str]) -> list[Any]:
    """Transfer.State values from numbers or names ("running" or "STATE_RUNNING")."""
    return [_enum(transfer_pb2.Transfer.State, s) for s in states]


def run_states(states: Iterable[int | str]) -> list[Any]:
    """Run.State values from numbers or names ("failed" or "STATE_FAILED")."""
    return [_enum(gateway_pb2.Run.State, s) for s in states]


def _enum(wrapper: Any, value: int | str) -> int:
    if isinstance(value, int):
        return value
    name = value.upper()
    if not name.startswith("STATE_"):
        name = "STATE_" + name
    try:
        return int(wrapper.Value(name))
    except ValueError:
        names = [n for n in wrapper.keys() if n != "STATE_UNSPECIFIED"]  # noqa: SIM118
        valid = ", ".join(n[6:].lower() for n in names)
        raise ValueError(f"unknown state {value!r}; valid: {valid}") from None


def image(endpoint: str, repository: str, reference: str) -> common_pb2.ImageLocation:
    return common_pb2.ImageLocation(endpoint=endpoint, repository=repository, reference=reference)


def import_vulnerabilities(
    path: str | None, data: bytes | None
) -> scan_pb2.ImportVulnerabilitiesRequest:
    if (path is None) == (data is None):
        raise ValueError("give exactly one of path= (on the scanner host) or data= (bytes)")
    if path is not None:
        return scan_pb2.ImportVulnerabilitiesRequest(path=path)
    return scan_pb2.ImportVulnerabilitiesRequest(data=data or b"")
