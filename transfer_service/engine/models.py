"""Request, progress and result of one copy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from registry_client import RegistryClient


@dataclass
class CopyRequest:
    """Copy `src_repo:src_ref` (tag or digest) from `src` to `dst_repo` on `dst`.

    Empty `dst_tag`: push by digest only.
    `platforms` ("linux/amd64", "linux/arm64/v8"): copy only those children of an index.
    """

    src: RegistryClient
    src_repo: str
    src_ref: str
    dst: RegistryClient
    dst_repo: str
    dst_tag: str = ""
    platforms: list[str] = field(default_factory=list)
    fail_if_tag_exists: bool = False
    # Awaited with the source's top digest just before `dst_tag` is written (nothing tagged
    # yet); raising stops the copy there (the transfer service's options.source_tag check).
    before_tag: Callable[[str], Awaitable[None]] | None = None
    # Referrers copied after the image (only when it was): "signatures", "attestations",
    # "sboms", "all"; empty: none.
    copy_referrers: tuple[str, ...] = ()
    # A later attempt of the same copy: blobs that reached the destination before are
    # likely there, so each is checked (HEAD) before anything is uploaded.
    resumed: bool = False


@dataclass(frozen=True)
class CopiedReferrer:
    """A referrer copied with the image: its digest (the source's, unchanged), its kind
    ("signature", "attestation", "sbom" or its artifact type) and the tag it went under
    (cosign's `sha256-<hex>.sig` scheme; empty: pushed by digest)."""

    digest: str
    kind: str
    tag: str = ""


@dataclass
class CopyProgress:
    """Counters of a copy. Every blob ends in exactly one of done (bytes transferred),
    skipped (already at the destination) or mounted (cross-repository mount)."""

    bytes_total: int = 0
    bytes_done: int = 0  # bytes uploaded to the destination
    bytes_skipped: int = 0  # bytes of skipped and mounted blobs
    blobs_total: int = 0
    blobs_done: int = 0
    blobs_skipped: int = 0
    blobs_mounted: int = 0
    manifests_total: int = 0
    manifests_done: int = 0
    digest: str = ""
    media_type: str = ""


@dataclass
class CopyResult:
    """`digest`/`media_type` of what the destination tag (or digest) now names: the source
    digest, or with a one-platform filter the digest of that platform's manifest."""

    digest: str
    media_type: str
    progress: CopyProgress
    platforms: list[str] = field(default_factory=list)
    pushed_index: bool = False
    # Digests of the index's children copied with it (by digest), in index order.
    children: list[str] = field(default_factory=list)
    referrers: list[CopiedReferrer] = field(default_factory=list)
    # Referrers that could not be copied (the image was), and what a copied signature still
    # proves when the destination names the image otherwise: one line each, for the message.
    referrer_problems: list[str] = field(default_factory=list)
    referrer_note: str = ""
