"""Moving one blob: resumable download, digest check before commit, streamed or spooled upload.

Small blobs stream GET -> PATCH. Large ones are written to a spool file (hashed on the way)
while the upload follows that file, so the two overlap; the spool lets a broken upload resume
without a new download.

Invariant: `finish_upload` (the PUT ?digest= that commits a blob) is only sent after the bytes
that went into the upload hashed to the expected digest and had the expected size. A mismatch
cancels the upload session instead.

Stalls are bounded: a download resumes (Range) at most `download_resumes` times, and a stall
right after a resume that brought no byte ends the attempt; a stalled source or a Retry-After
beyond the cap is not retried here but handed to the job's scheduler, which frees the slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry_client import RegistryClient, Upload
from registry_client.errors import (
    ConnectError,
    DigestMismatch,
    InvalidRequest,
    NotFound,
    Stalled,
)
from servicekit.retry import Backoff, is_retryable, retry_after_hint
from transfer_service.engine.spool import SourceFailed, SpoolFile, SpoolQuota, spool_path

log = logging.getLogger(__name__)

# Blobs up to this size are read whole, verified, then sent in one PUT.
SMALL_BLOB = 256 << 10

CHUNK = 1 << 20


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int


def hasher_for(digest: str) -> Any:
    algo = digest.partition(":")[0]
    if algo not in ("sha256", "sha512"):
        raise DigestMismatch(0, "DIGEST_INVALID", f"unsupported digest algorithm in {digest}")
    return hashlib.new(algo)


def transient(exc: BaseException) -> bool:
    """Worth another try of this blob now. A stalled source and a long Retry-After are
    retryable too, but later: the job's scheduler retries them, without holding a slot."""
    if isinstance(exc, Stalled) or retry_after_hint(exc) is not None:
        return False
    return is_retryable(exc)


class BlobMover:
    """Copies blobs between two clients; shared by every copy of one engine."""

    def __init__(
        self,
        spool_dir: Path,
        quota: SpoolQuota,
        attempts: int = 3,
        download_resumes: int = 5,
        backoff_base: float = 0.5,
        idle_cut: float = 10.0,
    ) -> None:
        self.spool_dir = spool_dir
        self.quota = quota
        self.attempts = attempts
        self.download_resumes = download_resumes
        self.backoff = Backoff(backoff_base, 10.0)
        # Seconds a spooled upload's request body may wait for a slow source before the
        # request is ended and continued by another (proxies drop idle uploads).
        self.idle_cut = idle_cut

    async def _pause(self, n: int) -> None:
        await self.backoff.sleep(n)

    async def download(
        self, src: RegistryClient, repo: str, blob: Blob, offset: int = 0
    ) -> AsyncIterator[bytes]:
        """The blob's bytes from `offset`; a broken connection resumes with a Range request.

        At most `download_resumes` resumes; a stall at the offset where the previous one
        stalled (the resume brought nothing) ends the download at once.
        """
        received = offset
        failures = 0
        stalled_at = -1
        while received < blob.size:
            try:
                async with src.open_blob(repo, blob.digest, offset=received) as body:
                    async for chunk in body.iter_chunks(CHUNK):
                        if received + len(chunk) > blob.size:
                            raise DigestMismatch(
                                0, "SIZE_INVALID", f"{blob.digest} is longer than {blob.size}"
                            )
                        received += len(chunk)
                        yield chunk
                if received < blob.size:
                    raise ConnectError(0, "", f"{blob.digest}: body ended at {received}")
            except ConnectError as e:
                failures += 1
                if failures > self.download_resumes:
                    raise
                if isinstance(e, Stalled):
                    if stalled_at == received:
                        raise
                    stalled_at = received
                log.info("download of %s broke at %d (%s); resuming", blob.digest, received, e)
                await self._pause(failures - 1)

    async def _small(
        self,
        src: RegistryClient,
        src_repo: str,
        dst: RegistryClient,
        dst_repo: str,
        blob: Blob,
        on_bytes: Callable[[int], None],
        session: Upload | None,
    ) -> None:
        """Download into memory, check size and digest, then upload it monolithically."""
        for attempt in range(self.attempts):
            data = bytearray()
            hasher = hasher_for(blob.digest)
            try:
                async for chunk in self.download(src, src_repo, blob):
                    hasher.update(chunk)
                    data += chunk
                    if len(data) > blob.size:
                        break  # more than the manifest says: _verify refuses it
                _verify(blob, len(data), hasher)
                # The PUT ends the session, sent or not: a retry starts another.
                up, session = session, None
                await dst.upload_blob(dst_repo, blob.digest, bytes(data), up)
                on_bytes(len(data))
                return
            except BaseException as e:
                if session is not None:
                    await _cancel_quietly(dst, session)
                    session = None
                if not isinstance(e, Exception) or not transient(e) or attempt + 1 >= self.attempts:
                    raise
                log.warning("copy of %s failed (%s); retrying", blob.digest, e)
                await self._pause(attempt)

    async def stream(
        self,
        src: RegistryClient,
        src_repo: str,
        dst: RegistryClient,
        dst_repo: str,
        blob: Blob,
        on_bytes: Callable[[int], None],
        session: Upload | None = None,
    ) -> None:
        """GET -> PATCH without touching disk; PUT only when the hash matched. A blob of at
        most SMALL_BLOB bytes is read whole and verified first, then sent in one PUT (two
        requests at the destination instead of three: configs, small layers). `session`:
        an upload session already started for this blob (the first attempt uses it)."""
        if 0 < blob.size <= SMALL_BLOB:
            await self._small(src, src_repo, dst, dst_repo, blob, on_bytes, session)
            return
        for attempt in range(self.attempts):
            sent = 0
            up: Upload | None = None
            try:
                up, session = session or await dst.start_upload(dst_repo), None
                hasher = hasher_for(blob.digest)
                source_failed: list[Exception] = []

                async def body(h: Any, failed: list[Exception]) -> AsyncIterator[bytes]:
                    nonlocal sent
                    try:
                        async for chunk in self.download(src, src_repo, blob):
                            h.update(chunk)
                            sent += len(chunk)
                            on_bytes(len(chunk))
                            yield chunk
                    except Exception as e:
                        failed.append(e)
                        raise

                try:
                    up = await dst.upload_chunk(up, body(hasher, source_failed), blob.size)
                except Exception:
                    # aiohttp reports a failing body as a broken upload connection: the
                    # source's own error (a stall, a long Retry-After) is what counts.
                    if source_failed:
                        raise source_failed[0] from None
                    raise
                _verify(blob, sent, hasher)
                await dst.finish_upload(up, blob.digest)
                return
            except BaseException as e:
                on_bytes(-sent)
                if up is not None:
                    await _cancel_quietly(dst, up)
                if not isinstance(e, Exception) or not transient(e) or attempt + 1 >= self.attempts:
                    raise
                log.warning("copy of %s failed (%s); retrying", blob.digest, e)
                await self._pause(attempt)

    async def spooled(
        self,
        src: RegistryClient,
        src_repo: str,
        dst: RegistryClient,
        dst_repo: str,
        blob: Blob,
        on_bytes: Callable[[int], None],
        overlap: bool = True,
    ) -> None:
        """GET -> spool file (hashing), the upload following the file as it grows; PUT only
        once the whole blob is on disk and verified.

        `overlap=False` uploads only after the download finished: needed when one client
        serves both sides, where uploads waiting on downloads could hold every request slot.
        A corrupted or failed download cancels its upload and starts both over; a broken
        upload resumes from the spool file without downloading again.
        """
        async with self.quota.reserve(blob.size):
            for attempt in range(self.attempts):
                spool = SpoolFile(spool_path(self.spool_dir, blob.digest))
                fill = asyncio.create_task(self._fill(src, src_repo, blob, spool))
                try:
                    if not overlap:
                        await spool.wait_complete()
                    await self._upload_following(dst, dst_repo, blob, spool, on_bytes)
                    return
                except SourceFailed as e:
                    if not transient(e.error) or attempt + 1 >= self.attempts:
                        raise e.error from None
                    log.warning("download of %s failed (%s); retrying", blob.digest, e.error)
                    await self._pause(attempt)
                finally:
                    if not fill.done():
                        fill.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await fill
                    spool.remove()

    async def _fill(self, src: RegistryClient, repo: str, blob: Blob, spool: SpoolFile) -> None:
        """Download into `spool`, hashing; ends in `spool.finish()` or `spool.fail(error)`."""
        try:
            hasher = hasher_for(blob.digest)
            parts: list[bytes] = []
            held = 0
            async for chunk in self.download(src, repo, blob):
                # Batch small network reads: one thread hop per MiB, not per read.
                parts.append(chunk)
                held += len(chunk)
                if held >= CHUNK:
                    await spool.append(parts, hasher)
                    parts, held = [], 0
            if parts:
                await spool.append(parts, hasher)
            _verify(blob, spool.written, hasher)
        except Exception as e:
            spool.fail(e)
        except BaseException as e:
            spool.fail(e)
            raise
        else:
            spool.finish()

    async def _upload_following(
        self,
        dst: RegistryClient,
        repo: str,
        blob: Blob,
        spool: SpoolFile,
        on_bytes: Callable[[int], None],
    ) -> None:
        """Upload from `spool` as it grows; commit once it is complete (verified)."""
        up: Upload = await dst.start_upload(repo)
        counted = 0
        failures = 0
        try:
            while True:
                try:
                    if up.offset != counted:
                        on_bytes(up.offset - counted)
                        counted = up.offset

                    async def body(start: int) -> AsyncIterator[bytes]:
                        nonlocal counted
                        async for chunk in spool.follow(start, CHUNK, self.idle_cut):
                            counted += len(chunk)
                            on_bytes(len(chunk))
                            yield chunk

                    if up.offset < blob.size:
                        # All on disk already (a retry): the exact length is known. While the
                        # download runs, chunked, so that a stalled source can end the body.
                        length = blob.size - up.offset if spool.complete else None
                        up = await dst.upload_chunk(up, body(up.offset), length)
                        if up.offset < blob.size:
                            continue  # the source stalled and the body was cut: go on
                    await spool.wait_complete()
                    await dst.finish_upload(up, blob.digest)
                    return
                except SourceFailed:
                    raise
                except Exception as e:
                    # A failed download also breaks the body of the PATCH following it.
                    spool.check()
                    failures += 1
                    if not transient(e) or failures >= self.attempts:
                        raise
                    log.warning("upload of %s broke (%s); resuming", blob.digest, e)
                    await self._pause(failures - 1)
                    try:
                        # Resume where the registry stands; the spool file still has it all.
                        up = await dst.resume_upload(up)
                    except (NotFound, InvalidRequest):
                        # 2.8.2 cancels a session whose signed state is stale (the answer
                        # to our last PATCH was lost): start over from the spool file.
                        up = await dst.start_upload(repo)
        except BaseException:
            on_bytes(-counted)
            await _cancel_quietly(dst, up)
            raise


def _verify(blob: Blob, size: int, hasher: Any) -> None:
    got = f"{blob.digest.partition(':')[0]}:{hasher.hexdigest()}"
    if size != blob.size or got != blob.digest:
        raise DigestMismatch(
            0, "DIGEST_INVALID", f"blob {blob.digest} ({blob.size} B) arrived as {got} ({size} B)"
        )


async def _cancel_quietly(dst: RegistryClient, up: Upload) -> None:
    # Best effort, also while being cancelled: an abandoned session only wastes registry disk.
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await asyncio.wait_for(dst.cancel_upload(up), 5)
