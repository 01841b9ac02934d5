"""ReadReferrers: an image's OCI referrers, read with the endpoint's credentials.

The gateway (signatures among referrers, attachments) and the scanner (SBOMs, attestations)
of a split deployment list referrers through this RPC, as they read manifests through
ReadManifest (transfer_service.registry_reads): same checks, same admin-only access, same
REGISTRY_ERROR mapping, so transfer_service.remote's list_referrers / has_referrers_api raise
what RegistryClient's would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mirror.v1 import transfer_pb2

from registry_client import errors as rc_errors
from registry_client.names import is_digest, repository_problem
from registry_client.referrers import Referrer, tag_schema_referrers
from servicekit.errors import invalid_argument
from transfer_service.registry_reads import registry_error

# An answer holds at most this many descriptors, in at most this many bytes: well under
# gRPC's default 4 MiB a client accepts, whatever channel the caller dialled.
MAX_REFERRERS = 1000
MAX_ANSWER_BYTES = 3 << 20


def _validate(r: transfer_pb2.ReadReferrersRequest) -> None:
    v: list[tuple[str, str]] = []
    if not r.endpoint:
        v.append(("endpoint", "required"))
    problem = repository_problem(r.repository)
    if problem:
        v.append(("repository", problem))
    # A digest of another algorithm passes here: the client refuses it (InvalidRequest), as
    # in-process.
    if not is_digest(r.digest):
        v.append(("digest", f"{r.digest!r} is not a digest"))
    if len(r.artifact_type) > 255:
        v.append(("artifact_type", "longer than 255 characters"))
    if v:
        raise invalid_argument("the request is not valid", v)


def _too_many(r: transfer_pb2.ReadReferrersRequest, what: str) -> rc_errors.RegistryError:
    return rc_errors.RegistryError(
        200, "", f"referrers of {r.repository}@{r.digest}: {what} (the transfer service "
        f"answers at most {MAX_REFERRERS} in {MAX_ANSWER_BYTES >> 20} MiB)"
    )


def _descriptor(ref: Referrer) -> transfer_pb2.ReferrerDescriptor:
    return transfer_pb2.ReferrerDescriptor(
        digest=ref.digest,
        media_type=ref.media_type,
        artifact_type=ref.artifact_type,
        size=ref.size,
        annotations=ref.annotations,
    )


async def read_referrers(
    client_for: Callable[[str], Any], r: transfer_pb2.ReadReferrersRequest
) -> transfer_pb2.ReferrersList:
    """The referrers of `r.digest` and whether the registry has the referrers API.

    RegistryClient.has_referrers_api says which way to list (one request); then
    list_referrers where there is an API, else the tag-schema index it would fall back to:
    on a registry without the API (2.8.2) the same two requests as in-process, on one with
    it one more (the probe's first page).
    """
    _validate(r)
    async with client_for(r.endpoint) as rc:  # NOT_FOUND: unknown endpoint
        try:
            api = bool(await rc.has_referrers_api(r.repository, r.digest))
            listed: list[Referrer] = []
            if r.api_only:
                pass
            elif api:
                listed = await rc.list_referrers(r.repository, r.digest, r.artifact_type)
            else:
                listed = await tag_schema_referrers(rc, r.repository, r.digest, r.artifact_type)
            if len(listed) > MAX_REFERRERS:
                raise _too_many(r, f"{len(listed)} listed")
        except rc_errors.RegistryError as exc:
            raise registry_error(exc) from exc
    out = transfer_pb2.ReferrersList(referrers=[_descriptor(x) for x in listed], api=api)
    if out.ByteSize() > MAX_ANSWER_BYTES:
        raise registry_error(_too_many(r, f"{out.ByteSize()} bytes of descriptors"))
    return out
