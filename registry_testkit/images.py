"""Build images without docker (OCI image layout on disk) and push/inspect them with skopeo.

Layers are real tar.gz files. Large random layers use gzip level 0 (stored blocks): cheap to
make, and no compression can shrink them, so their size on the wire is what was asked for.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import subprocess
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

CHUNK = 1 << 20


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        return cls(parts[0], parts[1], parts[2] if len(parts) > 2 else "")

    def as_dict(self) -> dict[str, str]:
        d = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            d["variant"] = self.variant
        return d


@dataclass
class Descriptor:
    media_type: str
    digest: str
    size: int

    def as_dict(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass
class ImageRef:
    """What was built: the top manifest/index and the blobs it needs."""

    layout: Path
    tag: str
    digest: str
    media_type: str
    manifest: bytes
    blobs: list[Descriptor] = field(default_factory=list)
    children: list[ImageRef] = field(default_factory=list)
    # skopeo source; Docker media types go through the `dir:` transport because skopeo's
    # `oci:` transport only looks up OCI-typed descriptors in index.json.
    source: str = ""

    @property
    def total_blob_bytes(self) -> int:
        return sum(b.size for b in self.all_blobs())

    def all_blobs(self) -> list[Descriptor]:
        seen: dict[str, Descriptor] = {}
        for b in self.blobs:
            seen[b.digest] = b
        for c in self.children:
            for b in c.all_blobs():
                seen[b.digest] = b
        return list(seen.values())


def random_chunks(size: int, seed: int | str) -> Iterator[bytes]:
    """`size` bytes of seeded pseudo-random data in 1 MiB chunks (fast, incompressible)."""
    rnd = random.Random(seed)
    left = size
    while left > 0:
        n = min(CHUNK, left)
        yield rnd.randbytes(n)
        left -= n


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class OciLayout:
    """An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self._index = self.path / "index.json"
        if not self._index.exists():
            self._write_index([])

    def _write_index(self, manifests: list[dict[str, Any]]) -> None:
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        self._index.write_text(json.dumps(doc))

    def blob_path(self, digest: str) -> Path:
        return self.path / "blobs" / "sha256" / digest.split(":", 1)[1]

    def add_blob(self, data: bytes, media_type: str) -> Descriptor:
        digest = _sha(data)
        self.blob_path(digest).write_bytes(data)
        return Descriptor(media_type, digest, len(data))

    def add_random_layer(
        self, size: int, seed: int | str, media_type: str
    ) -> tuple[Descriptor, str]:
        """A tar.gz layer holding one file of about `size` random bytes -> (descriptor, diff_id)."""
        tmp = self.path / "blobs" / f".tmp-{hashlib.sha256(str(seed).encode()).hexdigest()[:16]}"
        gz_hash, tar_hash = hashlib.sha256(), hashlib.sha256()
        # Level 0 deflate: stored blocks, ~5 bytes overhead per 64 KiB.
        comp = zlib.compressobj(0, zlib.DEFLATED, 31)
        payload = max(size - 1024 - 64, 1)
        info = tarfile.TarInfo(name=f"data-{seed}.bin")
        info.size = payload
        info.mode = 0o644
        header = info.tobuf(format=tarfile.USTAR_FORMAT)
        pad = (512 - payload % 512) % 512
        written = 0
        with open(tmp, "wb") as out:

            def put(raw: bytes) -> None:
                nonlocal written
                tar_hash.update(raw)
                z = comp.compress(raw)
                if z:
                    gz_hash.update(z)
                    out.write(z)
                    written += len(z)

            put(header)
            for chunk in random_chunks(payload, seed):
                put(chunk)
            put(b"\0" * (pad + 1024))
            tail = comp.flush()
            gz_hash.update(tail)
            out.write(tail)
            written += len(tail)
        digest = "sha256:" + gz_hash.hexdigest()
        tmp.rename(self.blob_path(digest))
        return Descriptor(media_type, digest, written), "sha256:" + tar_hash.hexdigest()

    def add_files_layer(self, files: dict[str, bytes], media_type: str) -> tuple[Descriptor, str]:
        """A tar.gz layer with the given files (for scanner tests) -> (descriptor, diff_id)."""
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, content in sorted(files.items()):
                info = tarfile.TarInfo(name=name)
                info.size = len(content)
                info.mode = 0o644
                info.mtime = 0
                tar.addfile(info, io.BytesIO(content))
        tar_bytes = raw.getvalue()
        gz = gzip.compress(tar_bytes, mtime=0)
        return self.add_blob(gz, media_type), _sha(tar_bytes)

    def export_dir(self, path: Path, top: bytes, children: Iterable[bytes] = ()) -> Path:
        """Write skopeo's `dir:` layout (blobs hard-linked) for `top` and its child manifests."""
        path.mkdir(parents=True, exist_ok=True)
        (path / "version").write_text("Directory Transport Version: 1.1\n")
        (path / "manifest.json").write_bytes(top)
        for child in children:
            (path / f"{hashlib.sha256(child).hexdigest()}.manifest.json").write_bytes(child)
        for blob in (self.path / "blobs" / "sha256").iterdir():
            target = path / blob.name
            if not target.exists():
                target.hardlink_to(blob)
        return path

    def tag(self, tag: str, desc: Descriptor, platform: Platform | None = None) -> None:
        doc = json.loads(self._index.read_text())
        manifests = [
            m
            for m in doc["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag
        ]
        extra: dict[str, Any] = {"annotations": {"org.opencontainers.image.ref.name": tag}}
        if platform is not None:
            extra["platform"] = platform.as_dict()
        manifests.append(desc.as_dict(**extra))
        self._write_index(manifests)


@dataclass
class LayerSpec:
    """A random layer of `size` bytes, or a layer with these files."""

    size: int = 1024
    files: dict[str, bytes] | None = None


class ImageBuilder:
    """Builds images into OCI layouts under `workdir` and pushes them with skopeo."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._seq = 0

    def _seed(self) -> str:
        self._seq += 1
        return f"{self.workdir.name}-{self._seq}-{random.random()}"

    def _layout(self, name: str | None) -> OciLayout:
        self._seq += 1
        return OciLayout(self.workdir / (name or f"layout-{self._seq}"))

    def _manifest(
        self,
        layout: OciLayout,
        layers: Iterable[int | LayerSpec | Descriptor],
        platform: Platform,
        labels: dict[str, str] | None,
        docker: bool,
        diff_ids: dict[str, str] | None = None,
    ) -> tuple[Descriptor, bytes, list[Descriptor]]:
        layer_type = DOCKER_LAYER if docker else OCI_LAYER
        descs: list[Descriptor] = []
        diffs: list[str] = []
        for spec in layers:
            if isinstance(spec, Descriptor):
                # Reuse a layer built before (shared layers across images).
                descs.append(Descriptor(layer_type, spec.digest, spec.size))
                diffs.append((diff_ids or {}).get(spec.digest, spec.digest))
                continue
            if isinstance(spec, int):
                spec = LayerSpec(size=spec)
            if spec.files is not None:
                d, diff = layout.add_files_layer(spec.files, layer_type)
            else:
                d, diff = layout.add_random_layer(spec.size, self._seed(), layer_type)
            descs.append(d)
            diffs.append(diff)
            if diff_ids is not None:
                diff_ids[d.digest] = diff
        config = {
            **platform.as_dict(),
            "created": "2024-01-01T00:00:00Z",
            "config": {"Labels": labels or {}, "Env": ["PATH=/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diffs},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "registry_testkit"}],
        }
        cfg = layout.add_blob(
            json.dumps(config, sort_keys=True).encode(), DOCKER_CONFIG if docker else OCI_CONFIG
        )
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
            "config": cfg.as_dict(),
            "layers": [d.as_dict() for d in descs],
        }
        if labels and not docker:
            doc["annotations"] = dict(labels)
        raw = json.dumps(doc, indent=2).encode()
        mdesc = layout.add_blob(raw, doc["mediaType"])
        return mdesc, raw, [cfg, *descs]

    def image(
        self,
        tag: str = "latest",
        layers: Iterable[int | LayerSpec | Descriptor] = (1024,),
        *,
        platform: Platform | str = Platform(),
        labels: dict[str, str] | None = None,
        docker: bool = False,
        name: str | None = None,
    ) -> ImageRef:
        """A single-platform image manifest (OCI, or Docker schema 2 with `docker=True`)."""
        layout = self._layout(name)
        plat = Platform.parse(platform) if isinstance(platform, str) else platform
        mdesc, raw, blobs = self._manifest(layout, layers, plat, labels, docker)
        if docker:
            src = f"dir:{layout.export_dir(layout.path.with_name(layout.path.name + '.dir'), raw)}"
        else:
            layout.tag(tag, mdesc)
            src = f"oci:{layout.path}:{tag}"
        return ImageRef(layout.path, tag, mdesc.digest, mdesc.media_type, raw, blobs, source=src)

    def index(
        self,
        tag: str = "latest",
        platforms: Iterable[Platform | str] = ("linux/amd64", "linux/arm64/v8"),
        layers: Iterable[int | LayerSpec] = (1024,),
        *,
        labels: dict[str, str] | None = None,
        docker: bool = False,
        shared_layers: Iterable[int] = (),
        name: str | None = None,
    ) -> ImageRef:
        """A multi-platform index (or Docker manifest list) with one image per platform.

        `shared_layers` are built once and put first in every platform's image.
        """
        layout = self._layout(name)
        layer_specs = list(layers)
        diff_ids: dict[str, str] = {}
        shared: list[Descriptor] = []
        for size in shared_layers:
            d, diff = layout.add_random_layer(
                size, self._seed(), DOCKER_LAYER if docker else OCI_LAYER
            )
            diff_ids[d.digest] = diff
            shared.append(d)
        children: list[ImageRef] = []
        entries: list[dict[str, Any]] = []
        for p in platforms:
            plat = Platform.parse(p) if isinstance(p, str) else p
            mdesc, raw, blobs = self._manifest(
                layout, [*shared, *layer_specs], plat, labels, docker, diff_ids
            )
            children.append(ImageRef(layout.path, "", mdesc.digest, mdesc.media_type, raw, blobs))
            entries.append(mdesc.as_dict(platform=plat.as_dict()))
        doc = {
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST if docker else OCI_INDEX,
            "manifests": entries,
        }
        raw = json.dumps(doc, indent=2).encode()
        idesc = layout.add_blob(raw, DOCKER_LIST if docker else OCI_INDEX)
        if docker:
            dir_path = layout.export_dir(
                layout.path.with_name(layout.path.name + ".dir"),
                raw,
                [c.manifest for c in children],
            )
            src = f"dir:{dir_path}"
        else:
            layout.tag(tag, idesc)
            src = f"oci:{layout.path}:{tag}"
        return ImageRef(layout.path, tag, idesc.digest, idesc.media_type, raw, [], children, src)


# -- skopeo ------------------------------------------------------------------------------


def _run(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess[bytes]:
    res = subprocess.run(args, capture_output=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args[:2])} failed ({res.returncode}): {res.stderr.decode(errors='replace')}"
        )
    return res


def push(
    image: ImageRef,
    registry: Any,
    repo: str,
    tag: str | None = None,
    user: str | None = None,
    password: str | None = None,
) -> str:
    """`skopeo copy --all --preserve-digests` the layout to `registry` (a RegistryProcess)."""
    dest = f"docker://{registry.host}/{repo}:{tag or image.tag}"
    _run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            *registry.skopeo_flags("dest", user, password),
            image.source,
            dest,
        ]
    )
    return image.digest


def inspect_raw(
    registry: Any, repo: str, ref: str, user: str | None = None, password: str | None = None
) -> bytes:
    """The manifest bytes exactly as the registry stores them (`skopeo inspect --raw`)."""
    sep = "@" if ref.startswith("sha256:") else ":"
    res = _run(
        [
            "skopeo",
            "inspect",
            "--raw",
            *[f.replace("--src-", "--") for f in registry.skopeo_flags("src", user, password)],
            f"docker://{registry.host}/{repo}{sep}{ref}",
        ]
    )
    return res.stdout


def digest_of(
    registry: Any, repo: str, ref: str, user: str | None = None, password: str | None = None
) -> str:
    """sha256 of the raw manifest that `skopeo inspect --raw` returns."""
    return _sha(inspect_raw(registry, repo, ref, user, password))


def list_tags(registry: Any, repo: str, user: str | None = None) -> list[str]:
    """`skopeo list-tags`; [] when the repository has no tags (2.8.2 answers 404 then)."""
    args = [
        "skopeo",
        "list-tags",
        *[f.replace("--src-", "--") for f in registry.skopeo_flags("src", user)],
        f"docker://{registry.host}/{repo}",
    ]
    res = subprocess.run(args, capture_output=True, timeout=120)
    if res.returncode != 0:
        if b"404" in res.stderr:
            return []
        raise RuntimeError(f"skopeo list-tags failed: {res.stderr.decode(errors='replace')}")
    return list(json.loads(res.stdout)["Tags"] or [])


def skopeo_copy(
    src: Any,
    src_ref: str,
    dst: Any,
    dst_ref: str,
    src_user: str | None = None,
    dst_user: str | None = None,
) -> None:
    """`skopeo copy --all --preserve-digests` registry to registry (refs are repo:tag)."""
    _run(
        [
            "skopeo",
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            *src.skopeo_flags("src", src_user),
            *dst.skopeo_flags("dest", dst_user),
            f"docker://{src.host}/{src_ref}",
            f"docker://{dst.host}/{dst_ref}",
        ],
        timeout=3600,
    )
