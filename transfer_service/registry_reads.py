"""Registry reads for other services: HeadManifest, ReadManifest, ReadBlob, ReadTags.

The gateway and the scanner of a split deployment read source images through these RPCs, so
an endpoint's credentials never leave the transfer service (docs/INTERFACES.md, "Endpoint
access for the scanner and gateway"). Registry failures keep their registry_client type in the
ErrorInfo (reason REGISTRY_ERROR, metadata kind/status/code/registry) so that
transfer_service.remote raises the same errors the in-process client would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from mirror.v1 import transfer_pb2

from registry_client import errors as rc_errors
from registry_client.names import is_digest, reference_problem, repository_problem
from servicekit.errors import ApiError, invalid_argument

REGISTRY_ERROR = "REGISTRY_ERROR"
# Each ReadBlob message carries at most this much (well under gRPC's 4 MiB default).
CHUNK_BYTES = 1 << 20
TAGS_PER_PAGE = 1000

# The registry_client error types a caller may tell apart, by name (the ErrorInfo `kind`).
KINDS: dict[str, type[rc_errors.RegistryError]] = {
    cls.__name__: cls
    for cls in (
        rc_errors.NotFound,
        rc_errors.AuthenticationError,
        rc_errors.PermissionDenied,
        rc_errors.TlsError,
        rc_errors.Stalled,
        rc_errors.ConnectError,
        rc_errors.DigestMismatch,
        rc_errors.InvalidRequest,
        rc_errors.RegistryError,
    )
}


def registry_error(exc: rc_errors.RegistryError) -> ApiError:
    """The gRPC error for a failed registry read: NOT_FOUND, UNAVAILABLE (worth another try)
    or FAILED_PRECONDITION; never UNAUTHENTICATED, which would speak of the caller's token."""
    kind = next((n for n, c in KINDS.items() if type(exc) is c), "RegistryError")
    if isinstance(exc, rc_errors.NotFound):
        code = grpc.StatusCode.NOT_FOUND
    elif exc.retryable:
        code = grpc.StatusCode.UNAVAILABLE
    else:
        code = grpc.StatusCode.FAILED_PRECONDITION
    return ApiError(
        code,
        str(exc),
        reason=REGISTRY_ERROR,
        metadata={
            "kind": kind,
            "status": str(exc.status),
            "code": exc.code,
            "registry": exc.registry,
            "message": exc.message,
        },
    )


def _check(endpoint: str, repository: str, reference: str, what: str) -> None:
    v: list[tuple[str, str]] = []
    if not endpoint:
        v.append(("endpoint", "required"))
    problem = repository_problem(repository)
    if problem:
        v.append(("repository", problem))
    if what == "digest":
        if not is_digest(reference):
            v.append(("digest", f"{reference!r} is not a digest"))
    elif what == "reference":
        problem = reference_problem(reference)
        if problem:
            v.append(("reference", problem))
    if v:
        raise invalid_argument("the request is not valid", v)


class RegistryReads:
    """The four read RPCs over `client_for(endpoint)` (EndpointStore: NOT_FOUND when unknown)."""

    def __init__(self, client_for: Callable[[str], Any]) -> None:
        self._client_for = client_for

    async def head_manifest(self, r: transfer_pb2.ReadManifestRequest) -> transfer_pb2.ManifestHead:
        _check(r.endpoint, r.repository, r.reference, "reference")
        async with self._client_for(r.endpoint) as rc:
            try:
                d = await rc.head_manifest(r.repository, r.reference)
            except rc_errors.RegistryError as exc:
                raise registry_error(exc) from exc
        if d is None:
            raise registry_error(
                rc_errors.NotFound(404, "MANIFEST_UNKNOWN", f"manifest {r.repository}:"
                                   f"{r.reference} not found")
            )
        return transfer_pb2.ManifestHead(media_type=d.media_type, digest=d.digest, size=d.size)

    async def read_manifest(
        self, r: transfer_pb2.ReadManifestRequest
    ) -> transfer_pb2.ManifestContent:
        _check(r.endpoint, r.repository, r.reference, "reference")
        async with self._client_for(r.endpoint) as rc:
            try:
                m = await rc.get_manifest(r.repository, r.reference)  # at most 4 MiB
            except rc_errors.RegistryError as exc:
                raise registry_error(exc) from exc
        return transfer_pb2.ManifestContent(media_type=m.media_type, digest=m.digest, data=m.data)

    async def read_blob(self, r: transfer_pb2.ReadBlobRequest) -> AsyncIterator[
        transfer_pb2.BlobChunk
    ]:
        _check(r.endpoint, r.repository, r.digest, "digest")
        if r.offset < 0:
            raise invalid_argument("the request is not valid", [("offset", "must be >= 0")])
        async with self._client_for(r.endpoint) as rc:
            try:
                async with rc.open_blob(r.repository, r.digest, r.offset) as body:
                    size = body.size if body.size is not None else -1
                    # Never more than the blob holds: a registry that sends more is cut off.
                    left = size - r.offset if size >= 0 else None
                    first = True
                    async for chunk in body.iter_chunks(CHUNK_BYTES):
                        if left is not None:
                            chunk = chunk[:left]
                            left -= len(chunk)
                        if first:
                            yield transfer_pb2.BlobChunk(data=chunk, size=size, offset=r.offset)
                            first = False
                        elif chunk:
                            yield transfer_pb2.BlobChunk(data=chunk)
                        if left == 0:
                            break
                    if first:
                        yield transfer_pb2.BlobChunk(size=size, offset=r.offset)
            except rc_errors.RegistryError as exc:
                raise registry_error(exc) from exc

    async def read_tags(self, r: transfer_pb2.ReadTagsRequest) -> AsyncIterator[
        transfer_pb2.TagPage
    ]:
        _check(r.endpoint, r.repository, "", "")
        async with self._client_for(r.endpoint) as rc:
            try:
                tags = await rc.list_tags(r.repository)
            except rc_errors.RegistryError as exc:
                raise registry_error(exc) from exc
        for i in range(0, len(tags), TAGS_PER_PAGE):
            yield transfer_pb2.TagPage(tags=tags[i : i + TAGS_PER_PAGE])
        if not tags:
            yield transfer_pb2.TagPage()
