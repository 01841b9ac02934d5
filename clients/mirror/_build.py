"""Request builders shared by the sync and asyncio clients (keyword arguments -> messages).

Every RPC whose request takes more than copying arguments into one message is built here, so
`mirror.client` and `mirror.aio` differ only in how they call and await.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf import field_mask_pb2, json_format, timestamp_pb2

from mirror import enums, policyfields
from mirror.v1 import common_pb2, gateway_pb2, policy_pb2, scan_pb2, transfer_pb2

FactsArg = common_pb2.ImageFacts | Mapping[str, Any]
OverwriteArg = int | str  # policy_pb2.OVERWRITE_NEVER, "never" or "OVERWRITE_NEVER"
DeletionsArg = int | str  # policy_pb2.DELETION_MODE_PROPAGATE, "propagate", "dry_run", "off"

# Fields of Policy a caller may set; the rest are output only.
POLICY_FIELDS = (
    "name", "description", "source", "rule", "target", "tag_template", "time_zone", "enabled",
    "overwrite", "allow_incomplete_facts", "trigger", "platforms", "keep_newest", "deletions",
    "copy_referrers", "signature_wait",
)
ENDPOINT_FIELDS = (
    "url", "username", "secret", "ca_pem", "insecure_skip_verify", "max_concurrency",
    "requests_per_second", "scan_on_push", "aliases", "webhook_secret",
)
# Keyword -> field path of the nested messages: endpoint/repository are the target's,
# source_endpoint/source_repository the source's.
_POLICY_PATHS = {
    "endpoint": "target.endpoint", "repository": "target.repository",
    "source_endpoint": "source.endpoint", "source_repository": "source.repository",
}


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
    """A Policy from a message and/or keyword fields (target given as endpoint + repository,
    source as source_endpoint + source_repository)."""
    out = policy_pb2.Policy()
    if policy is not None:
        out.CopyFrom(policy)
    for key, value in fields.items():
        if value is None:
            continue
        if key in _POLICY_PATHS:
            part, name = _POLICY_PATHS[key].split(".")
            setattr(getattr(out, part), name, value)
        elif key in ("target", "source"):
            getattr(out, key).CopyFrom(value)
        elif key == "overwrite":
            out.overwrite = overwrite(value)  # type: ignore[assignment]
        elif key == "deletions":
            out.deletions = deletions(value)  # type: ignore[assignment]
        elif key == "trigger":
            out.trigger.CopyFrom(policyfields.trigger(value))
        elif key == "signature_wait":
            out.signature_wait.CopyFrom(policyfields.duration(value))
        elif key in ("platforms", "copy_referrers"):
            items = [value] if isinstance(value, str) else list(value)
            if key == "copy_referrers":
                items = policyfields.referrer_kinds(items)
            field = getattr(out, key)
            del field[:]
            field.extend(items)
        else:
            setattr(out, key, value)
    return out


def deletions(value: DeletionsArg) -> int:
    """A DeletionMode value from a number or a name ("off", "propagate", "dry_run")."""
    return enums.value_of(policy_pb2.DeletionMode.DESCRIPTOR, value)


def overwrite(value: OverwriteArg) -> int:
    """An Overwrite value from a number or a name ("always", "never")."""
    return enums.value_of(policy_pb2.Overwrite.DESCRIPTOR, value)


def policy_mask(fields: Mapping[str, Any]) -> field_mask_pb2.FieldMask:
    """The update mask naming each field given (endpoint/repository are target.*,
    source_endpoint/source_repository are source.*)."""
    paths = [_POLICY_PATHS.get(key, key) for key, value in fields.items() if value is not None]
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


def transfer_states(states: Iterable[int | str]) -> list[Any]:
    """Transfer.State values from numbers or names ("running" or "STATE_RUNNING")."""
    return [_enum(transfer_pb2.Transfer.State, s) for s in states]


def run_states(states: Iterable[int | str]) -> list[Any]:
    """Run.State values from numbers or names ("failed" or "STATE_FAILED")."""
    return [_enum(gateway_pb2.Run.State, s) for s in states]


def _enum(wrapper: Any, value: int | str) -> int:
    return enums.value_of(wrapper.DESCRIPTOR, value)


def import_vulnerabilities(
    path: str | None, data: bytes | None
) -> scan_pb2.ImportVulnerabilitiesRequest:
    if (path is None) == (data is None):
        raise ValueError("give exactly one of path= (on the scanner host) or data= (bytes)")
    if path is not None:
        return scan_pb2.ImportVulnerabilitiesRequest(path=path)
    return scan_pb2.ImportVulnerabilitiesRequest(data=data or b"")


def create_policy(
    policy: policy_pb2.Policy | None, fields: Mapping[str, Any], validate_only: bool
) -> policy_pb2.CreatePolicyRequest:
    """CreatePolicy; a policy built from keywords alone is enabled unless `enabled=False`.

    ValueError when no source endpoint is given: a policy reads from one registry only.
    """
    if policy is None and fields.get("enabled") is None:
        fields = {**fields, "enabled": True}
    msg = policy_message(policy, fields)
    if not msg.source.endpoint:
        raise ValueError(
            "source_endpoint= is required: the endpoint whose pushes the policy acts on "
            "(with source_repository=, an exact repository or a glob)"
        )
    return policy_pb2.CreatePolicyRequest(policy=msg, validate_only=validate_only)


def update_policy(id: str, etag: str, fields: Mapping[str, Any]) -> policy_pb2.UpdatePolicyRequest:
    """UpdatePolicy of the fields given (not None), masked so the others keep their value."""
    msg = policy_message(None, fields)
    msg.id = id
    msg.etag = etag
    return policy_pb2.UpdatePolicyRequest(policy=msg, update_mask=policy_mask(fields))


def evaluate(
    facts_arg: FactsArg, endpoint: str, explain: bool, evaluation_time: dt.datetime | None
) -> policy_pb2.EvaluateRequest:
    return policy_pb2.EvaluateRequest(
        facts=facts(facts_arg), endpoint=endpoint, explain=explain,
        evaluation_time=timestamp(evaluation_time),
    )


def create_endpoint(
    endpoint: transfer_pb2.Endpoint | None, name: str | None, fields: Mapping[str, Any]
) -> transfer_pb2.CreateEndpointRequest:
    msg = endpoint_message(endpoint, name, _listed_aliases(fields))
    return transfer_pb2.CreateEndpointRequest(endpoint=msg)


def update_endpoint(name: str, fields: Mapping[str, Any]) -> transfer_pb2.UpdateEndpointRequest:
    """UpdateEndpoint of the fields given (not None), masked so the others keep their value."""
    fields = _listed_aliases(fields)
    return transfer_pb2.UpdateEndpointRequest(
        endpoint=endpoint_message(None, name, fields), update_mask=endpoint_mask(fields)
    )


def _listed_aliases(fields: Mapping[str, Any]) -> dict[str, Any]:
    # aliases may be any iterable (a generator too); it is read once, here
    aliases = fields.get("aliases")
    return {**fields, "aliases": None if aliases is None else list(aliases)}


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
    source_tag: str = "",
    idempotency_key: str = "",
    copy_referrers: Iterable[str] = (),
) -> transfer_pb2.StartTransferRequest:
    return transfer_pb2.StartTransferRequest(
        source=common_pb2.ImageLocation(
            endpoint=source_endpoint, repository=source_repository, reference=source_reference
        ),
        destination=transfer_pb2.TransferDestination(
            endpoint=destination_endpoint, repository=destination_repository, tag=destination_tag
        ),
        options=transfer_pb2.TransferOptions(
            platforms=list(platforms), fail_if_tag_exists=fail_if_tag_exists,
            source_tag=source_tag, copy_referrers=policyfields.referrer_kinds(copy_referrers),
        ),
        idempotency_key=idempotency_key,
    )


def list_transfers(
    *,
    page_size: int,
    page_token: str,
    states: Iterable[int | str],
    destination_endpoint: str,
    repository: str,
) -> transfer_pb2.ListTransfersRequest:
    return transfer_pb2.ListTransfersRequest(
        page_size=page_size, page_token=page_token, states=transfer_states(states),
        destination_endpoint=destination_endpoint, repository=repository,
    )


def list_runs(
    *, policy_id: str, states: Iterable[int | str], page_size: int, page_token: str
) -> gateway_pb2.ListRunsRequest:
    return gateway_pb2.ListRunsRequest(
        policy_id=policy_id, states=run_states(states), page_size=page_size,
        page_token=page_token,
    )


def scan_image(
    *, endpoint: str, repository: str, reference: str, force: bool
) -> scan_pb2.ScanImageRequest:
    image = common_pb2.ImageLocation(
        endpoint=endpoint, repository=repository, reference=reference
    )
    return scan_pb2.ScanImageRequest(image=image, force=force)
