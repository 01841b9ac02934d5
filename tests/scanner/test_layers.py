"""Layer reading on tar streams built here: order, whiteouts, compression, hostile input."""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib

import pytest

from scanner.errors import ScanError
from scanner.layers import LayerReader, Limits, Selector
from tests.scanner.layerkit import Link, compress, layer, tar_bytes, whiteout

WANT_ALL = Selector(wants_file=lambda p: p.endswith(".txt"), wants_link=lambda p: True)


def read(*blobs: bytes, limits: Limits | None = None) -> LayerReader:
    r = LayerReader(WANT_ALL, limits)
    for b in blobs:
        r.read_layer(io.BytesIO(b))
    return r


@pytest.mark.parametrize("kind", ["none", "gzip", "zstd"])
def test_compressions_are_detected_from_the_stream(kind: str) -> None:
    r = read(layer({"a/b.txt": b"hello", "a/c.bin": b"ignored"}, kind))
    assert r.tree.files == {"a/b.txt": b"hello"}


def test_later_layer_overrides_and_whiteout_deletes() -> None:
    lower = layer({"etc/x.txt": b"1", "etc/y.txt": b"2", "opt/app/z.txt": b"3", "./keep.txt": b"k"})
    upper = layer({"etc/x.txt": b"one", whiteout("etc/y.txt"): b"", whiteout("opt/app"): b""})
    r = read(lower, upper)
    assert r.tree.files == {"etc/x.txt": b"one", "keep.txt": b"k"}


def test_opaque_directory_hides_lower_contents_but_keeps_its_own_layer() -> None:
    lower = layer({"srv/a.txt": b"a", "srv/sub/b.txt": b"b", "other/c.txt": b"c"})
    upper = layer({"srv/.wh..wh..opq": b"", "srv/new.txt": b"n"})
    r = read(lower, upper)
    assert r.tree.files == {"srv/new.txt": b"n", "other/c.txt": b"c"}


def test_whiteout_applies_only_to_lower_layers() -> None:
    # Same layer holds the whiteout and a new file of that name: the new file stays.
    lower = layer({"d/f.txt": b"old"})
    upper = layer({whiteout("d/f.txt"): b"", "d/f.txt": b"new"})
    assert read(lower, upper).tree.files == {"d/f.txt": b"new"}


def test_kept_symlinks_resolve_and_non_kept_replacement_removes_file() -> None:
    r = read(layer({"usr/lib/os.txt": b"debian", "etc/os.txt": Link("../usr/lib/os.txt")}))
    assert r.tree.get("etc/os.txt") == b"debian"
    r2 = read(layer({"x/f.txt": b"1"}), layer({"x/f.txt": None}))
    assert "x/f.txt" not in r2.tree.files


def test_gzip_stream_with_several_members_is_read_whole() -> None:
    raw = tar_bytes({"a.txt": b"A", "b.txt": b"B"})
    blob = gzip.compress(raw[:512]) + gzip.compress(raw[512:])
    assert read(blob).tree.files == {"a.txt": b"A", "b.txt": b"B"}


def test_path_escape_with_dotdot_is_refused() -> None:
    with pytest.raises(ScanError) as exc:
        read(layer({"ok.txt": b"1", "a/../../etc/passwd.txt": b"x"}))
    assert exc.value.reason == "PATH_ESCAPE"
    assert "../../etc/passwd.txt" in exc.value.message


def test_absolute_path_is_refused() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("/etc/shadow.txt")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ScanError) as exc:
        read(buf.getvalue())
    assert exc.value.reason == "PATH_ESCAPE"


def test_too_many_members_is_refused() -> None:
    blob = layer({f"f{i}": b"" for i in range(300)})
    with pytest.raises(ScanError) as exc:
        read(blob, limits=Limits(max_members_per_layer=200))
    assert exc.value.reason == "TOO_MANY_MEMBERS"
    assert "layer 1" in exc.value.message


def _zero_member_gzip(name: str, size: int) -> bytes:
    """A gzip'd tar holding one member of `size` zero bytes, compressed as it streams."""
    info = tarfile.TarInfo(name)
    info.size = size
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [comp.compress(header)]
    zeros = bytes(1 << 20)
    left = size + (-size % 512) + 1024  # data, padding, end-of-archive blocks
    while left:
        n = min(left, len(zeros))
        out.append(comp.compress(zeros[:n]))
        left -= n
    out.append(comp.flush())
    return b"".join(out)


def test_declared_size_over_budget_is_refused_before_reading() -> None:
    blob = _zero_member_gzip("big.bin", 64 << 20)
    assert len(blob) < 200_000  # a small download that would inflate to 64 MiB
    r = LayerReader(WANT_ALL, Limits(max_image_bytes=8 << 20))
    with pytest.raises(ScanError) as exc:
        r.read_layer(io.BytesIO(blob))
    assert exc.value.reason == "IMAGE_TOO_LARGE"
    assert r.bytes_read < 1 << 20


def test_decompressed_budget_counts_every_layer() -> None:
    blob = _zero_member_gzip("a.bin", 3 << 20)
    r = LayerReader(WANT_ALL, Limits(max_image_bytes=8 << 20))
    r.read_layer(io.BytesIO(blob))
    r.read_layer(io.BytesIO(blob))
    with pytest.raises(ScanError) as exc:
        r.read_layer(io.BytesIO(blob))
    assert exc.value.reason == "IMAGE_TOO_LARGE"


def test_huge_wanted_file_is_refused_without_holding_it() -> None:
    blob = _zero_member_gzip("var/db/status.txt", 65 << 20)
    r = LayerReader(WANT_ALL)
    with pytest.raises(ScanError) as exc:
        r.read_layer(io.BytesIO(blob))
    assert exc.value.reason == "FILE_TOO_LARGE"
    assert "/var/db/status.txt" in exc.value.message
    assert r.captured_bytes == 0


def test_garbage_is_a_clear_error() -> None:
    with pytest.raises(ScanError) as exc:
        read(compress(b"this is not a tar archive" * 40, "gzip"))
    assert exc.value.reason == "LAYER_UNREADABLE"


async def _chunks(data: bytes, size: int = 1000, fail_at: int = -1):  # type: ignore[no-untyped-def]
    for i in range(0, len(data), size):
        if fail_at >= 0 and i >= fail_at:
            raise ConnectionError("connection reset")
        yield data[i : i + size]


async def test_chunk_stream_is_read_and_digest_checked() -> None:
    import hashlib

    from scanner.layers import read_layer_chunks

    blob = layer({"a.txt": b"A" * 5000, "b.txt": b"B"})
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    r = LayerReader(WANT_ALL)
    await read_layer_chunks(r, _chunks(blob), digest)
    assert r.tree.files["b.txt"] == b"B"
    with pytest.raises(ScanError) as exc:
        await read_layer_chunks(LayerReader(WANT_ALL), _chunks(blob), "sha256:" + "0" * 64)
    assert exc.value.reason == "DIGEST_MISMATCH"


async def test_chunk_stream_failure_and_refusal_stop_the_reader() -> None:
    from scanner.layers import read_layer_chunks

    blob = layer({f"f{i}.txt": bytes(200) for i in range(200)}, "none")
    with pytest.raises(ConnectionError):
        await read_layer_chunks(LayerReader(WANT_ALL), _chunks(blob, fail_at=20_000))
    with pytest.raises(ScanError) as exc:
        await read_layer_chunks(LayerReader(WANT_ALL, Limits(max_members_per_layer=10)),
                                _chunks(blob))
    assert exc.value.reason == "TOO_MANY_MEMBERS"
