"""The OCI distribution API of one registry: manifests, blobs, uploads, mounts, tags."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import quote, urljoin, urlsplit

import aiohttp

from registry_client import mediatypes
from registry_client.bodies import read_limited
from registry_client.config import RegistryConfig
from registry_client.errors import (
    ConnectError,
    DigestMismatch,
    InvalidRequest,
    NotFound,
    RegistryError,
    Stalled,
)
from registry_client.names import is_digest, is_verifiable_digest
from registry_client.referrers import Referrer, parse_index, tag_schema_referrers
from registry_client.transport import Transport

MAX_MANIFEST_BYTES = 4 << 20
_MAX_REFERRER_PAGES = 64
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')


@dataclass(frozen=True)
class ManifestDescriptor:
    media_type: str
    digest: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """A manifest exactly as the registry stores it: push `data` back to keep `digest`."""

    media_type: str
    digest: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    def json(self) -> dict[str, object]:
        doc = json.loads(self.data)
        if not isinstance(doc, dict):
            raise InvalidRequest(0, "MANIFEST_INVALID", "manifest is not a JSON object")
        return doc


@dataclass(frozen=True)
class Upload:
    """An open blob upload; `offset` is how many bytes the registry holds (client-tracked)."""

    repo: str
    location: str
    offset: int = 0


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _pull(repo: str) -> str:
    return f"repository:{repo}:pull"


def _push(repo: str) -> str:
    return f"repository:{repo}:pull,push"


def _with_query(location: str, **params: str) -> str:
    # The Location may already carry a query (the signed _state): append, do not replace.
    sep = "&" if "?" in location else "?"
    return location + sep + "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())


def _range_end(header: str | None) -> int | None:
    """Bytes held from a `Range: 0-N` header (N inclusive)."""
    if not header:
        return None
    m = re.match(r"^(?:bytes=)?(\d+)-(-?\d+)$", header.strip())
    if not m:
        return None
    end = int(m.group(2))
    # 2.8.2 answers "0-0" for an empty upload (and, ambiguously, for 1 byte): treat as empty.
    return 0 if end <= 0 else end + 1


class BlobReader:
    """A blob download in progress: `size` is the full blob size, `offset` where it starts."""

    def __init__(
        self,
        resp: aiohttp.ClientResponse,
        offset: int,
        size: int | None,
        idle: float = 0.0,
        registry: str = "",
    ) -> None:
        self._resp = resp
        self.offset = offset
        self.size = size
        self._idle = idle
        self._registry = registry

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Body read failures as typed errors naming the registry."""
        err: RegistryError
        try:
            yield
            return
        except (aiohttp.ServerTimeoutError, TimeoutError) as e:
            # The transport reads GET bodies under the idle timeout: no byte for that long.
            err = Stalled(0, "", f"blob download stalled: no bytes for {self._idle:g}s")
            cause: BaseException = e
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as e:
            err = ConnectError(0, "", f"blob download interrupted: {type(e).__name__}")
            cause = e
        err.registry = self._registry
        raise err from cause

    async def skip(self, n: int) -> None:
        """Read and drop `n` bytes (a registry that ignored our Range)."""
        with self._reading():
            while n > 0:
                chunk = await self._resp.content.read(min(n, 1 << 20))
                if not chunk:
                    raise ConnectError(0, "", "blob shorter than the resume offset")
                n -= len(chunk)

    async def iter_chunks(self, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """The body as it arrives, in pieces of at most `chunk_size` bytes."""
        with self._reading():
            # The network reads as they came (no copying them together); only a piece
            # larger than asked for is split.
            async for data, _ in self._resp.content.iter_chunks():
                if len(data) <= chunk_size:
                    yield data
                    continue
                for i in range(0, len(data), chunk_size):
                    yield data[i : i + chunk_size]


class RegistryClient:
    """Client of one registry. Use as `async with RegistryClient(cfg) as rc:`."""

    def __init__(self, cfg: RegistryConfig) -> None:
        self.cfg = cfg
        self.transport = Transport(cfg)

    @property
    def key(self) -> str:
        """Identity of the registry (scheme://host:port)."""
        return self.cfg.key

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.transport.close()

    # -- base ------------------------------------------------------------------------------

    async def ping(self) -> None:
        """GET /v2/ with authentication; raises typed errors (TlsError, AuthenticationError...)."""
        async with self.transport.request("GET", "/v2/", context="ping"):
            pass

    # -- manifests -------------------------------------------------------------------------

    async def get_manifest(self, repo: str, ref: str) -> Manifest:
        """The manifest's exact bytes; verified against `ref` when it is a digest."""
        async with self.transport.request(
            "GET",
            f"/v2/{repo}/manifests/{ref}",
            scopes=[_pull(repo)],
            headers={"Accept": mediatypes.ACCEPT_MANIFESTS},
            context=f"manifest {repo}:{ref}",
        ) as resp:
            data = await read_limited(resp, MAX_MANIFEST_BYTES)
            if len(data) > MAX_MANIFEST_BYTES:
                raise InvalidRequest(0, "MANIFEST_INVALID", f"manifest {repo}:{ref} over 4 MiB")
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip()
            header_digest = resp.headers.get("Docker-Content-Digest", "")
        digest = sha256_digest(data)
        if is_digest(ref) and ref != digest:
            raise DigestMismatch(0, "DIGEST_INVALID", f"manifest {repo}@{ref} hashes to {digest}")
        if header_digest.startswith("sha256:") and header_digest != digest:
            raise DigestMismatch(
                0, "DIGEST_INVALID", f"manifest {repo}:{ref}: header says {header_digest}"
            )
        media_type = ctype if ctype in mediatypes.MANIFEST_TYPES else _media_type_of(data, ctype)
        return Manifest(media_type, digest, data)

    async def head_manifest(self, repo: str, ref: str) -> ManifestDescriptor | None:
        """Descriptor of the manifest, or None when absent."""
        try:
            async with self.transport.request(
                "HEAD",
                f"/v2/{repo}/manifests/{ref}",
                scopes=[_pull(repo)],
                headers={"Accept": mediatypes.ACCEPT_MANIFESTS},
                context=f"manifest {repo}:{ref}",
            ) as resp:
                ctype = resp.headers.get("Content-Type", "").split(";")[0].strip()
                digest = resp.headers.get("Docker-Content-Digest", "")
                size = resp.content_length
        except NotFound:
            return None
        if not digest or size is None or ctype not in mediatypes.MANIFEST_TYPES:
            m = await self.get_manifest(repo, ref)
            return ManifestDescriptor(m.media_type, m.digest, m.size)
        return ManifestDescriptor(ctype, digest, size)

    async def put_manifest(self, repo: str, ref: str, data: bytes, media_type: str) -> str:
        """Push the exact bytes under a tag or digest; returns the digest (checked).

        When the answer is lost (the connection broke after the registry may have stored the
        manifest), the registry is asked (HEAD `ref`) before anything is called failed.
        """
        digest = sha256_digest(data)
        try:
            async with self.transport.request(
                "PUT",
                f"/v2/{repo}/manifests/{ref}",
                scopes=[_push(repo)],
                ok=(201, 200),
                headers={"Content-Type": media_type},
                data=data,
                context=f"push manifest {repo}:{ref}",
            ) as resp:
                got = resp.headers.get("Docker-Content-Digest", digest)
        except ConnectError:
            if not await self._manifest_is(repo, ref, digest):
                raise
            return digest
        if got != digest:
            raise DigestMismatch(0, "DIGEST_INVALID", f"registry stored {got}, pushed {digest}")
        return digest

    async def _manifest_is(self, repo: str, ref: str, digest: str) -> bool:
        """Whether `ref` in `repo` names `digest` now (False also when the registry cannot say)."""
        try:
            have = await self.head_manifest(repo, ref)
        except RegistryError:
            return False
        return have is not None and have.digest == digest

    async def delete_manifest(self, repo: str, digest: str) -> None:
        async with self.transport.request(
            "DELETE",
            f"/v2/{repo}/manifests/{digest}",
            scopes=[f"repository:{repo}:delete"],
            ok=(202, 200),
            context=f"delete manifest {repo}@{digest}",
        ):
            pass

    # -- blobs -----------------------------------------------------------------------------

    async def blob_size(self, repo: str, digest: str) -> int | None:
        """Size of the blob in `repo` (HEAD), or None when absent."""
        try:
            async with self.transport.request(
                "HEAD",
                f"/v2/{repo}/blobs/{digest}",
                scopes=[_pull(repo)],
                context=f"blob {repo}@{digest}",
            ) as resp:
                return resp.content_length if resp.content_length is not None else 0
        except NotFound:
            return None

    @asynccontextmanager
    async def open_blob(self, repo: str, digest: str, offset: int = 0) -> AsyncIterator[BlobReader]:
        """Stream a blob from `offset` (Range request for a resume)."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        async with self.transport.request(
            "GET",
            f"/v2/{repo}/blobs/{digest}",
            scopes=[_pull(repo)],
            ok=(200, 206),
            headers=headers,
            context=f"blob {repo}@{digest}",
        ) as resp:
            size = _total_size(resp, offset)
            reader = BlobReader(
                resp, offset, size, self.cfg.idle_timeout, urlsplit(self.cfg.base_url).netloc
            )
            if offset and resp.status == 200:
                await reader.skip(offset)  # Range ignored: skip what we already have
            yield reader

    async def start_upload(self, repo: str) -> Upload:
        """POST an upload session (never with a body: 2.8.2 would drop it)."""
        async with self.transport.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/",
            scopes=[_push(repo)],
            ok=(202,),
            headers={"Content-Length": "0"},
            context=f"start upload {repo}",
        ) as resp:
            return Upload(repo, self._location(resp), 0)

    async def start_upload_unless_held(self, repo: str, digest: str) -> Upload | None:
        """POST an upload session that first asks to mount `digest` from `repo` itself: None
        when the repository already holds the blob (201), else the session (202).

        One request where HEAD + POST are two, for a blob expected to be missing. A registry
        without mounts answers 202 too (the spec's fallback for a mount it cannot do).
        """
        return await self._mount_or_session(repo, digest, repo, f"start upload {repo}")

    async def upload_chunk(
        self, up: Upload, data: bytes | AsyncIterable[bytes], length: int | None = None
    ) -> Upload:
        """PATCH bytes (or a stream) at the client-tracked offset; returns the advanced upload.

        2.8.2 ignores Content-Range and appends, so the offset is ours to track; a registry
        whose Range disagrees raises so the caller can resume from `upload_status`. A stream
        of known `length` goes with Content-Length instead of chunked (no framing copies); if
        it yields more or fewer bytes the request is broken off (ConnectError), never sent
        short. A registry that accepts no byte of a stream for `idle_timeout` seconds (it
        stopped reading) ends the request with Stalled; waits for the stream itself do not
        count.
        """
        sent = 0
        loop = asyncio.get_running_loop()
        idle = self.cfg.idle_timeout
        watch = asyncio.timeout(None)

        def arm(when: float | None) -> None:
            with contextlib.suppress(RuntimeError):  # the request already ended
                watch.reschedule(when)

        headers = {"Content-Type": "application/octet-stream"}
        body: bytes | AsyncIterable[bytes]
        if isinstance(data, bytes):
            if not data:
                return up
            sent = len(data)
            headers["Content-Range"] = f"{up.offset}-{up.offset + sent - 1}"
            headers["Content-Length"] = str(sent)
            body = data
        else:

            async def counted() -> AsyncIterator[bytes]:
                nonlocal sent
                async for chunk in data:
                    sent += len(chunk)
                    if length is not None and sent > length:
                        raise ValueError(f"upload stream longer than its length {length}")
                    # aiohttp asks for the next piece once this one is written: until then
                    # the registry is taking it, and must within the idle timeout.
                    arm(loop.time() + idle)
                    yield chunk
                    arm(None)
                if length is not None and sent != length:
                    raise ValueError(f"upload stream ended at {sent} of {length} bytes")

            body = counted()
            if length is not None:
                if length == 0:
                    return up
                headers["Content-Length"] = str(length)
                headers["Content-Range"] = f"{up.offset}-{up.offset + length - 1}"
        try:
            async with (
                watch,
                self.transport.request(
                    "PATCH",
                    up.location,
                    scopes=[_push(up.repo)],
                    ok=(202, 204),
                    headers=headers,
                    data=body,
                    retry=False,
                    retry_statuses=(408, 429),
                    context=f"upload chunk {up.repo}",
                ) as resp,
            ):
                location = self._location(resp, up.location)
                held = _range_end(resp.headers.get("Range"))
        except TimeoutError as e:
            if not watch.expired():
                raise
            err = Stalled(0, "", f"upload chunk {up.repo}: no bytes accepted for {idle:g}s")
            err.registry = urlsplit(self.cfg.base_url).netloc
            raise err from e
        offset = up.offset + sent
        if held is not None and held != offset and not (offset == 1 and held == 0):
            raise RegistryError(0, "BLOB_UPLOAD_INVALID", f"registry holds {held}, sent {offset}")
        return Upload(up.repo, location, offset)

    async def upload_status(self, up: Upload) -> int:
        """How many bytes the registry holds for this upload (the resume point)."""
        return (await self.resume_upload(up)).offset

    async def resume_upload(self, up: Upload) -> Upload:
        """The upload as the registry sees it: fresh location, `offset` = bytes held."""
        async with self.transport.request(
            "GET",
            up.location,
            scopes=[_push(up.repo)],
            ok=(204, 200),
            context=f"upload status {up.repo}",
        ) as resp:
            held = _range_end(resp.headers.get("Range")) or 0
            return Upload(up.repo, self._location(resp, up.location), held)

    async def finish_upload(self, up: Upload, digest: str, data: bytes | None = None) -> str:
        """PUT ?digest= to commit (with the last bytes, or none); returns the digest.

        The commit is not resent blindly: when its answer is lost (connection broken after the
        registry committed, so a second PUT would find the session gone), the blob is HEADed
        in the repository and a blob of the expected size there counts as committed.
        """
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(len(data or b"")),
        }
        try:
            async with self.transport.request(
                "PUT",
                _with_query(up.location, digest=digest),
                scopes=[_push(up.repo)],
                ok=(201, 204),
                headers=headers,
                data=data or b"",
                retry=False,
                context=f"finish upload {up.repo}@{digest}",
            ) as resp:
                return resp.headers.get("Docker-Content-Digest", digest)
        except (ConnectError, NotFound):
            try:
                held = await self.blob_size(up.repo, digest)
            except RegistryError:
                held = None
            if held is None or held != up.offset + len(data or b""):
                raise
            return digest

    async def cancel_upload(self, up: Upload) -> None:
        """DELETE the upload session; an already-gone session is fine."""
        try:
            async with self.transport.request(
                "DELETE",
                up.location,
                scopes=[_push(up.repo)],
                ok=(204, 200, 202),
                context=f"cancel upload {up.repo}",
            ):
                pass
        except NotFound:
            pass

    async def upload_blob(
        self, repo: str, digest: str, data: bytes, session: Upload | None = None
    ) -> str:
        """Monolithic upload: POST (unless `session` is one already started), then PUT
        ?digest= with the whole body."""
        up = session or await self.start_upload(repo)
        return await self.finish_upload(up, digest, data)

    async def mount_blob(self, repo: str, digest: str, from_repo: str) -> bool:
        """Cross-repository mount; True when mounted (201). A 202 upload is cancelled."""
        up = await self._mount_or_session(repo, digest, from_repo, f"mount {from_repo} -> {repo}")
        if up is None:
            return True
        await self.cancel_upload(up)
        return False

    async def _mount_or_session(
        self, repo: str, digest: str, from_repo: str, context: str
    ) -> Upload | None:
        """POST ?mount=&from=: None when mounted (201), else the upload session it opened."""
        path = f"/v2/{repo}/blobs/uploads/?mount={quote(digest)}&from={quote(from_repo, safe='/')}"
        scopes = [_push(repo)] if from_repo == repo else [_push(repo), _pull(from_repo)]
        async with self.transport.request(
            "POST",
            path,
            scopes=scopes,
            ok=(201, 202),
            headers={"Content-Length": "0"},
            context=context,
        ) as resp:
            if resp.status == 201:
                return None
            return Upload(repo, self._location(resp), 0)

    # -- tags ------------------------------------------------------------------------------

    async def list_tags(self, repo: str, page_size: int = 0) -> list[str]:
        """All tags of `repo`, following Link pagination."""
        tags: list[str] = []
        url: str | None = f"/v2/{repo}/tags/list" + (f"?n={page_size}" if page_size else "")
        while url:
            async with self.transport.request(
                "GET", url, scopes=[_pull(repo)], context=f"tags {repo}"
            ) as resp:
                body = await read_limited(resp, 16 << 20)
                link = resp.headers.get("Link", "")
            try:
                doc = json.loads(body)
            except ValueError as e:
                raise RegistryError(200, "", f"tags of {repo}: not JSON") from e
            tags.extend(t for t in (doc.get("tags") or []) if isinstance(t, str))
            m = _LINK_NEXT.search(link)
            url = urljoin(self.cfg.base_url + "/", m.group(1)) if m else None
        return tags

    async def list_repositories(self, page_size: int = 0) -> list[str]:
        """Every repository the catalog lists (`GET /v2/_catalog`), following Link pagination.

        Registries may list only what the account can see; token auth asks for the
        `registry:catalog:*` scope.
        """
        names: list[str] = []
        seen: set[str] = set()
        url: str | None = "/v2/_catalog" + (f"?n={page_size}" if page_size else "")
        while url:
            # A registry that links a page to itself must not loop forever.
            if url in seen:
                raise RegistryError(200, "", f"catalog: Link header repeats {url}")
            seen.add(url)
            async with self.transport.request(
                "GET", url, scopes=["registry:catalog:*"], context="catalog"
            ) as resp:
                body = await read_limited(resp, 16 << 20)
                link = resp.headers.get("Link", "")
            try:
                doc = json.loads(body)
            except ValueError as e:
                raise RegistryError(200, "", "catalog: not JSON") from e
            names.extend(r for r in (doc.get("repositories") or []) if isinstance(r, str))
            m = _LINK_NEXT.search(link)
            url = urljoin(self.cfg.base_url + "/", m.group(1)) if m else None
        return names

    # -- referrers -------------------------------------------------------------------------

    async def list_referrers(
        self, repo: str, digest: str, artifact_type: str = ""
    ) -> list[Referrer]:
        """The manifests whose `subject` is `digest` (optionally only of `artifact_type`).

        Through the OCI 1.1 referrers API where the registry has it; where it answers 404
        (docker-registry 2.8.2, plain text) or 405, through the referrers tag schema: the
        index tagged `sha256-<hex>` (none: no referrers).
        """
        found = await self._referrers_api(repo, digest, artifact_type)
        if found is not None:
            return found
        return await tag_schema_referrers(self, repo, digest, artifact_type)

    async def has_referrers_api(self, repo: str, digest: str) -> bool:
        """Whether the registry answers the referrers API for `digest` in `repo` (if not, the
        pusher of a manifest with a subject keeps the `sha256-<hex>` tag index)."""
        return await self._referrers_api(repo, digest, pages=1) is not None

    async def _referrers_api(
        self, repo: str, digest: str, artifact_type: str = "", pages: int = _MAX_REFERRER_PAGES
    ) -> list[Referrer] | None:
        """The API's referrers of `digest` (up to `pages` pages); None when the registry has
        no referrers API."""
        if not is_verifiable_digest(digest):
            raise InvalidRequest(0, "DIGEST_INVALID", f"not a sha256 digest: {digest!r}")
        query = f"?artifactType={quote(artifact_type, safe='')}" if artifact_type else ""
        url: str | None = f"/v2/{repo}/referrers/{digest}{query}"
        out: list[Referrer] = []
        seen: set[str] = set()
        while url:
            # A registry that links a page to itself (or pages forever) must not loop.
            if len(seen) >= pages:
                if pages < _MAX_REFERRER_PAGES:
                    break  # a probe: one page says whether there is an API
                raise RegistryError(200, "", f"referrers of {repo}@{digest}: too many pages")
            if url in seen:
                raise RegistryError(
                    200,
                    "",
                    f"referrers of {repo}@{digest}: too many pages (a page links to itself)",
                )
            seen.add(url)
            try:
                async with self.transport.request(
                    "GET",
                    url,
                    scopes=[_pull(repo)],
                    headers={"Accept": mediatypes.OCI_INDEX},
                    context=f"referrers {repo}@{digest}",
                ) as resp:
                    body = await read_limited(resp, MAX_MANIFEST_BYTES)
                    link = resp.headers.get("Link", "")
            except (NotFound, InvalidRequest) as e:
                if seen != {url} or (isinstance(e, InvalidRequest) and e.status != 405):
                    raise
                return None  # no referrers API here: the caller falls back to the tag schema
            if len(body) > MAX_MANIFEST_BYTES or not _is_index(body):
                if seen == {url}:
                    return None  # answered, but not with a referrers index: not the API
                raise RegistryError(200, "", f"referrers of {repo}@{digest}: not an index")
            # Filter here too: a registry may ignore the artifactType filter (it says so in
            # OCI-Filters-Applied, or not at all).
            out.extend(parse_index(body, artifact_type))
            m = _LINK_NEXT.search(link)
            url = urljoin(self.cfg.base_url + "/", m.group(1)) if m else None
        return out

    # -- helpers ---------------------------------------------------------------------------

    def _location(self, resp: aiohttp.ClientResponse, default: str = "") -> str:
        loc = resp.headers.get("Location") or default
        if not loc:
            raise RegistryError(resp.status, "", "upload answer without Location")
        return urljoin(self.cfg.base_url + "/", loc)


def _total_size(resp: aiohttp.ClientResponse, offset: int) -> int | None:
    crange = resp.headers.get("Content-Range", "")
    m = re.search(r"/(\d+)$", crange)
    if m:
        return int(m.group(1))
    if resp.content_length is None:
        return None
    return resp.content_length + (offset if resp.status == 206 else 0)


def _is_index(data: bytes) -> bool:
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get("manifests"), list)


def _media_type_of(data: bytes, fallback: str) -> str:
    try:
        doc = json.loads(data)
    except ValueError:
        return fallback
    mt = doc.get("mediaType") if isinstance(doc, dict) else None
    if isinstance(mt, str) and mt:
        return mt
    if isinstance(doc, dict) and "manifests" in doc:
        return mediatypes.OCI_INDEX
    return fallback or mediatypes.OCI_MANIFEST
