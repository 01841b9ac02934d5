"""Streaming layer reader: applies layers in order (with whiteouts) and keeps only wanted files.

Layers are read as tar streams (plain, gzip or zstd, detected from the first bytes), member by
member; nothing is extracted and a layer is never held in memory. Only the contents of small
files a parser asked for (by path) are kept, under limits that refuse tar bombs, huge package
databases and paths escaping the root.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import posixpath
import queue
import tarfile
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import BinaryIO

import zstandard

from scanner.errors import ScanError

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_MAX_LINK_HOPS = 8


@dataclass(frozen=True)
class Limits:
    """Per-image budgets; exceeding any of them refuses the image with a ScanError.

    The defaults sit far above real images (a full Ubuntu has ~3k packages and a 4 MB dpkg
    status) and keep one scan within seconds and tens of MB; see scanner/bounds.py.
    """

    max_file_bytes: int = 16 << 20  # one package database / metadata file
    max_image_bytes: int = 16 << 30  # decompressed bytes over all layers
    max_members_per_layer: int = 500_000
    max_captured_bytes: int = 128 << 20  # all kept files together
    max_captured_files: int = 100_000  # kept files over all layers (metadata, copyrights)
    max_blob_bytes: int = 8 << 20  # configs, attached SBOMs (read whole)
    max_package_records: int = 50_000  # paragraphs / records / metadata files parsed
    max_report_bytes: int = 2 << 20  # one ScanReport, well under gRPC's 4 MiB messages


@dataclass(frozen=True)
class Selector:
    """Which paths (normalized, no leading '/') to keep: regular files and symlinks."""

    wants_file: Callable[[str], bool]
    wants_link: Callable[[str], bool] = lambda _p: False


@dataclass
class FileTree:
    """The merged view of the kept files after the layers read so far."""

    files: dict[str, bytes] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    def resolve(self, path: str) -> str:
        """Follow kept symlinks on `path` and its parents (relative or absolute targets)."""
        for _ in range(_MAX_LINK_HOPS):
            parts = path.split("/")
            for i in range(len(parts), 0, -1):
                prefix = "/".join(parts[:i])
                target = self.links.get(prefix)
                if target is None:
                    continue
                if target.startswith("/"):
                    base = target.lstrip("/")
                else:
                    base = posixpath.join(posixpath.dirname(prefix), target)
                rest = parts[i:]
                path = posixpath.normpath(posixpath.join(base, *rest)).lstrip("/")
                if path.startswith(".."):
                    return ""
                break
            else:
                return path
        return path

    def get(self, path: str) -> bytes | None:
        """Contents of a kept file, following kept symlinks."""
        data = self.files.get(path)
        if data is not None:
            return data
        return self.files.get(self.resolve(path))

    def _apply(
        self,
        deleted: set[str],
        opaque: set[str],
        files: dict[str, bytes],
        links: dict[str, str],
    ) -> None:
        # Whiteouts hide only what lower layers hold, so they go before this layer's entries.
        if deleted or opaque:
            for store in (self.files, self.links):
                for path in [p for p in store if _hidden(p, deleted, opaque)]:
                    del store[path]
        for path in files:
            self.links.pop(path, None)
        for path in links:
            self.files.pop(path, None)
        self.files.update(files)
        self.links.update(links)


def _hidden(path: str, deleted: set[str], opaque: set[str]) -> bool:
    if path in deleted:
        return True
    parent = path
    while "/" in parent:
        parent = parent.rsplit("/", 1)[0]
        if parent in deleted or parent in opaque:
            return True
    return "" in opaque


def normalize_member_name(name: str) -> str:
    """The member's path relative to the root; ScanError when it is absolute or escapes."""
    if name.startswith("/"):
        raise ScanError("PATH_ESCAPE", f"layer member has an absolute path: {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ScanError("PATH_ESCAPE", f"layer member path escapes the root: {name!r}")
    return "/".join(parts)


class _Budget(io.RawIOBase):
    """Counts decompressed bytes and refuses to go past the image's budget."""

    def __init__(self, inner: BinaryIO, reader: LayerReader) -> None:
        self._inner = inner
        self._reader = reader

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(b))
        n = len(data)
        b[:n] = data
        self._reader.count_bytes(n)
        return n


class LayerReader:
    """Reads an image's layers in order into a FileTree, keeping only selected files."""

    def __init__(self, selector: Selector, limits: Limits | None = None) -> None:
        self.selector = selector
        self.limits = limits or Limits()
        self.tree = FileTree()
        self.bytes_read = 0
        self.captured_bytes = 0
        self.captured_files = 0
        self.layers_read = 0

    def count_bytes(self, n: int) -> None:
        self.bytes_read += n
        if self.bytes_read > self.limits.max_image_bytes:
            raise ScanError(
                "IMAGE_TOO_LARGE",
                f"layers decompress to more than {self.limits.max_image_bytes} bytes",
            )

    def read_layer(self, fileobj: BinaryIO) -> None:
        """Read one layer blob (plain, gzip or zstd tar) and merge it over the lower layers."""
        buffered = fileobj if hasattr(fileobj, "peek") else io.BufferedReader(fileobj)  # type: ignore[arg-type,type-var]
        head = buffered.peek(4)[:4]  # type: ignore[attr-defined]
        stream: BinaryIO
        if head.startswith(_GZIP_MAGIC):
            stream = gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[assignment]
        elif head.startswith(_ZSTD_MAGIC):
            stream = zstandard.ZstdDecompressor().stream_reader(buffered, read_across_frames=True)  # type: ignore[assignment]
        else:
            stream = buffered
        budget = io.BufferedReader(_Budget(stream, self), buffer_size=64 << 10)
        layer = self.layers_read + 1
        try:
            self._read_tar(budget)
        except ScanError as err:
            raise ScanError(err.reason, f"layer {layer}: {err.message}") from None
        except (tarfile.TarError, OSError, EOFError, zstandard.ZstdError) as err:
            raise ScanError(
                "LAYER_UNREADABLE", f"layer {layer} is not a readable tar: {err}"
            ) from None
        self.layers_read = layer

    def _read_tar(self, stream: BinaryIO) -> None:
        limits = self.limits
        deleted: set[str] = set()
        opaque: set[str] = set()
        files: dict[str, bytes] = {}
        links: dict[str, str] = {}
        members = 0
        with tarfile.open(fileobj=stream, mode="r|") as tf:
            while True:
                member = tf.next()
                if member is None:
                    break
                # Stream mode keeps every TarInfo; drop them so a huge layer costs no memory.
                tf.members.clear()  # type: ignore[attr-defined]  # undocumented, stable since 2.x
                members += 1
                if members > limits.max_members_per_layer:
                    raise ScanError(
                        "TOO_MANY_MEMBERS",
                        f"more than {limits.max_members_per_layer} entries (tar bomb?)",
                    )
                if member.size > limits.max_image_bytes - self.bytes_read:
                    raise ScanError(
                        "IMAGE_TOO_LARGE",
                        f"{member.name!r} declares {member.size} bytes, over the image budget "
                        f"of {limits.max_image_bytes} decompressed bytes (tar bomb?)",
                    )
                path = normalize_member_name(member.name)
                if not path:
                    continue
                base = posixpath.basename(path)
                if base.startswith(WHITEOUT_PREFIX):
                    parent = posixpath.dirname(path)
                    if base == OPAQUE_MARKER:
                        opaque.add(parent)
                    else:
                        deleted.add(posixpath.join(parent, base[len(WHITEOUT_PREFIX) :]))
                    continue
                if member.isreg() and self.selector.wants_file(path):
                    files[path] = self._capture(tf, member, path)
                elif member.islnk() and self.selector.wants_file(path):
                    target = normalize_member_name(member.linkname)
                    data = files.get(target)
                    if data is None:
                        data = self.tree.files.get(target)
                    if data is not None:
                        files[path] = data
                elif member.issym() and self.selector.wants_link(path):
                    links[path] = member.linkname
                elif path in self.tree.files or path in self.tree.links:
                    # Something else now sits where a kept file was: the old one is gone.
                    deleted.add(path)
        self.tree._apply(deleted, opaque, files, links)

    def _capture(self, tf: tarfile.TarFile, member: tarfile.TarInfo, path: str) -> bytes:
        limits = self.limits
        if member.size > limits.max_file_bytes:
            raise ScanError(
                "FILE_TOO_LARGE",
                f"/{path} is {member.size} bytes, over the limit of {limits.max_file_bytes}",
            )
        if self.captured_bytes + member.size > limits.max_captured_bytes:
            raise ScanError(
                "TOO_MUCH_METADATA",
                f"package metadata exceeds {limits.max_captured_bytes} bytes",
            )
        self.captured_files += 1
        if self.captured_files > limits.max_captured_files:
            raise ScanError(
                "TOO_MUCH_METADATA",
                f"more than {limits.max_captured_files} package metadata files (at /{path})",
            )
        f = tf.extractfile(member)
        data = f.read() if f is not None else b""
        self.captured_bytes += len(data)
        return data


class _ChunkPipe(io.RawIOBase):
    """A blocking reader fed with chunks from the event loop (bounded, so memory stays small)."""

    def __init__(self, depth: int = 16) -> None:
        self._q: queue.Queue[bytes | BaseException | None] = queue.Queue(depth)
        self._buf = memoryview(b"")
        self._eof = False
        self.reader_done = threading.Event()

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            if self._eof:
                return 0
            item = self._q.get()
            if item is None:
                self._eof = True
                return 0
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            self._buf = memoryview(item)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def put(self, item: bytes | BaseException | None) -> bool:
        """Blocking put; False once the reader has stopped (nothing more is wanted)."""
        while not self.reader_done.is_set():
            try:
                self._q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    async def feed(self, item: bytes | BaseException | None) -> bool:
        if self.reader_done.is_set():
            return False
        try:
            self._q.put_nowait(item)
            return True
        except queue.Full:
            return await asyncio.to_thread(self.put, item)


async def read_layer_chunks(
    reader: LayerReader, chunks: AsyncIterator[bytes], digest: str = ""
) -> None:
    """Feed one layer's blob chunks to `reader` (parsing runs in a worker thread).

    When `digest` is given (sha256:...), the bytes are checked against it.
    """
    pipe = _ChunkPipe()

    def work() -> None:
        try:
            reader.read_layer(pipe)  # type: ignore[arg-type]
        finally:
            pipe.reader_done.set()

    task = asyncio.create_task(asyncio.to_thread(work))
    hasher = hashlib.sha256() if digest.startswith("sha256:") else None
    reading = True
    try:
        async for chunk in chunks:
            if hasher is not None:
                hasher.update(chunk)
            if reading and not await pipe.feed(bytes(chunk)):
                # The reader stopped: on an error stop downloading, else only hash the rest.
                reading = False
                await asyncio.wait({task})
                if task.exception() is not None:
                    break
        if reading:
            await pipe.feed(None)
    except BaseException as exc:
        if not pipe.reader_done.is_set():
            await pipe.feed(ScanError("LAYER_UNREADABLE", f"download failed: {exc}"))
        pipe.reader_done.set()
        await asyncio.gather(task, return_exceptions=True)
        raise
    await task
    if hasher is not None and f"sha256:{hasher.hexdigest()}" != digest:
        raise ScanError("DIGEST_MISMATCH", f"layer {digest} does not hash to its digest")
