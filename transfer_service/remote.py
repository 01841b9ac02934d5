"""Endpoint access over the transfer service's API, for the gateway and the scanner.

`RemoteEndpoints(channel).client_for(name)` stands in for `EndpointStore.client_for` in a split
deployment: the same subset of registry_client.RegistryClient the gateway and the scanner use
(head_manifest, get_manifest, open_blob(...).iter_chunks(), list_tags, list_repositories,
list_referrers, has_referrers_api), raising the same registry_client.errors types, but every
read goes through TransferService (HeadManifest, ReadManifest, ReadBlob, ReadTags,
ListRepositories, ReadReferrers). The endpoint's credentials stay in the transfer service; the
channel carries the admin token those RPCs need.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import TracebackType

import grpc
from google.rpc import error_details_pb2
from grpc import aio
from grpc_status import rpc_status
from mirror.v1 import transfer_pb2, transfer_pb2_grpc

from registry_client import errors as rc_errors
from registry_client.client import MAX_MANIFEST_BYTES, Manifest, ManifestDescriptor
from registry_client.names import is_verifiable_digest
from registry_client.referrers import Referrer
from servicekit import paging
from servicekit.errors import ApiError
from transfer_service.registry_reads import KINDS, REGISTRY_ERROR

_CALL_TIMEOUT_S = 120.0
# A ReadManifest answer holds up to 4 MiB of manifest (registry_client.MAX_MANIFEST_BYTES)
# plus its fields: more than gRPC's default 4 MiB a client accepts. Dial with these.
CHANNEL_OPTIONS = (("grpc.max_receive_message_length", MAX_MANIFEST_BYTES + (64 << 10)),)


def _error_info(err: aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    return None


def to_local_error(err: aio.AioRpcError) -> Exception:
    """The exception the in-process client would have raised for this RPC failure.

    A registry failure becomes its registry_client type again; an unknown endpoint (or any
    other API refusal) the servicekit ApiError EndpointStore.client_for raises; a transfer
    service that cannot be reached a retryable ConnectError.
    """
    info = _error_info(err)
    if info is not None and info.reason == REGISTRY_ERROR:
        md = info.metadata
        cls = KINDS.get(md.get("kind", ""), rc_errors.RegistryError)
        status = int(md.get("status", "0") or 0)
        exc = cls(status, md.get("code", ""), md.get("message", "") or (err.details() or ""))
        exc.registry = md.get("registry", "")
        return exc
    if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return rc_errors.ConnectError(
            0, "", f"transfer service: {err.code().name}: {err.details() or ''}"
        )
    return ApiError(
        err.code(), err.details() or "", reason=info.reason if info is not None else ""
    )


class RemoteBlob:
    """A blob download through ReadBlob: `size` the full size (None: unknown), `offset`."""

    def __init__(self, first: transfer_pb2.BlobChunk, rest: AsyncIterator[transfer_pb2.BlobChunk]):
        self.size: int | None = first.size if first.size >= 0 else None
        self.offset = first.offset
        self._first = first.data
        self._rest = rest

    async def iter_chunks(self, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """The body as it arrives, in pieces of at most `chunk_size` bytes."""
        try:
            pending = [self._first] if self._first else []
            while True:
                for data in pending:
                    for i in range(0, len(data), chunk_size):
                        yield data[i : i + chunk_size]
                nxt = await anext(self._rest, None)
                if nxt is None:
                    return
                pending = [nxt.data]
        except aio.AioRpcError as err:
            raise to_local_error(err) from err


class RemoteRegistryClient:
    """One endpoint's registry, read through the transfer service. `async with` like
    RegistryClient (it holds no connection of its own: the channel is the caller's)."""

    def __init__(self, stub: transfer_pb2_grpc.TransferServiceStub, endpoint: str) -> None:
        self._stub = stub
        self.endpoint = endpoint

    async def __aenter__(self) -> RemoteRegistryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def close(self) -> None:
        return None

    def _req(self, repo: str, ref: str) -> transfer_pb2.ReadManifestRequest:
        return transfer_pb2.ReadManifestRequest(
            endpoint=self.endpoint, repository=repo, reference=ref
        )

    async def head_manifest(self, repo: str, ref: str) -> ManifestDescriptor | None:
        """Descriptor of the manifest, or None when absent."""
        try:
            d = await self._stub.HeadManifest(self._req(repo, ref), timeout=_CALL_TIMEOUT_S)
        except aio.AioRpcError as err:
            local = to_local_error(err)
            if isinstance(local, rc_errors.NotFound):
                return None
            raise local from err
        return ManifestDescriptor(d.media_type, d.digest, d.size)

    async def get_manifest(self, repo: str, ref: str) -> Manifest:
        """The manifest's exact bytes (verified by the transfer service against a digest ref)."""
        try:
            m = await self._stub.ReadManifest(self._req(repo, ref), timeout=_CALL_TIMEOUT_S)
        except aio.AioRpcError as err:
            raise to_local_error(err) from err
        return Manifest(m.media_type, m.digest, m.data)

    @asynccontextmanager
    async def open_blob(self, repo: str, digest: str, offset: int = 0) -> AsyncIterator[RemoteBlob]:
        """Stream a blob from `offset`."""
        call = self._stub.ReadBlob(
            transfer_pb2.ReadBlobRequest(
                endpoint=self.endpoint, repository=repo, digest=digest, offset=offset
            )
        )
        stream: AsyncIterator[transfer_pb2.BlobChunk] = call.__aiter__()
        try:
            try:
                first = await anext(stream)
            except aio.AioRpcError as err:
                raise to_local_error(err) from err
            except StopAsyncIteration:
                raise rc_errors.ConnectError(0, "", f"blob {repo}@{digest}: empty answer") from None
            yield RemoteBlob(first, stream)
        finally:
            # A reader that stops early must not leave the stream (and the registry's) open.
            call.cancel()

    async def list_tags(self, repo: str, page_size: int = 0) -> list[str]:
        """All tags of `repo`."""
        tags: list[str] = []
        try:
            async for page in self._stub.ReadTags(
                transfer_pb2.ReadTagsRequest(endpoint=self.endpoint, repository=repo),
                timeout=_CALL_TIMEOUT_S,
            ):
                tags.extend(page.tags)
        except aio.AioRpcError as err:
            raise to_local_error(err) from err
        return tags

    async def list_repositories(self, page_size: int = 0) -> list[str]:
        """Every repository the registry's catalog lists (ListRepositories, all pages).

        `page_size` (the registry's page size in-process) is not passed on: the transfer
        service lists the whole catalog for each API page, so the pages asked are the largest.
        """
        names: list[str] = []
        token = ""
        while True:
            try:
                resp = await self._stub.ListRepositories(
                    transfer_pb2.ListRepositoriesRequest(
                        endpoint=self.endpoint, page_size=paging.MAX_PAGE_SIZE,
                        page_token=token,
                    ),
                    timeout=_CALL_TIMEOUT_S,
                )
            except aio.AioRpcError as err:
                local = to_local_error(err)
                if isinstance(local, ApiError) and local.reason == "CATALOG_UNAVAILABLE":
                    # The in-process client raises the registry's error here.
                    raise rc_errors.RegistryError(0, "", local.message) from err
                raise local from err
            names.extend(resp.repositories)
            token = resp.next_page_token
            if not token:
                return names

    async def _read_referrers(
        self, repo: str, digest: str, artifact_type: str, api_only: bool
    ) -> transfer_pb2.ReferrersList:
        if not is_verifiable_digest(digest):
            # What RegistryClient raises, before asking anyone.
            raise rc_errors.InvalidRequest(0, "DIGEST_INVALID", f"not a sha256 digest: {digest!r}")
        try:
            return await self._stub.ReadReferrers(
                transfer_pb2.ReadReferrersRequest(
                    endpoint=self.endpoint, repository=repo, digest=digest,
                    artifact_type=artifact_type, api_only=api_only,
                ),
                timeout=_CALL_TIMEOUT_S,
            )
        except aio.AioRpcError as err:
            raise to_local_error(err) from err

    async def list_referrers(
        self, repo: str, digest: str, artifact_type: str = ""
    ) -> list[Referrer]:
        """The manifests whose `subject` is `digest` (optionally only of `artifact_type`):
        the referrers API where the registry has it, else the `sha256-<hex>` index (none: no
        referrers). `raw` is rebuilt from the descriptor's fields (the wire carries no
        others)."""
        listed = await self._read_referrers(repo, digest, artifact_type, api_only=False)
        return [_referrer(d) for d in listed.referrers]

    async def has_referrers_api(self, repo: str, digest: str) -> bool:
        """Whether the registry answers the referrers API for `digest` in `repo`."""
        return (await self._read_referrers(repo, digest, "", api_only=True)).api


def _referrer(d: transfer_pb2.ReferrerDescriptor) -> Referrer:
    """registry_client.referrers.Referrer, as RegistryClient.list_referrers returns it."""
    annotations = dict(d.annotations)
    raw: dict[str, object] = {"mediaType": d.media_type, "digest": d.digest, "size": d.size}
    if d.artifact_type:
        raw["artifactType"] = d.artifact_type
    if annotations:
        raw["annotations"] = dict(annotations)
    return Referrer(
        media_type=d.media_type, digest=d.digest, size=d.size, artifact_type=d.artifact_type,
        annotations=annotations, raw=raw,
    )


class RemoteEndpoints:
    """transfer_service.endpoints.EndpointResolver over a channel to the transfer service
    (dialled with CHANNEL_OPTIONS, or the largest manifests are refused)."""

    def __init__(self, channel: aio.Channel) -> None:
        self._stub = transfer_pb2_grpc.TransferServiceStub(channel)

    def __repr__(self) -> str:
        return "RemoteEndpoints(transfer service)"

    def client_for(self, name: str) -> RemoteRegistryClient:
        return RemoteRegistryClient(self._stub, name)
