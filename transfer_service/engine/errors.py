"""Engine errors that are not a registry's (those come from registry_client.errors)."""

from __future__ import annotations


class CopyError(Exception):
    """A copy cannot be done as asked; retrying will not help."""

    retryable = False  # read by servicekit.retry.is_retryable


class TagExists(CopyError):
    """The destination tag points at another digest and the request forbids overwriting."""

    def __init__(self, repo: str, tag: str, existing: str, wanted: str) -> None:
        self.repo, self.tag, self.existing, self.wanted = repo, tag, existing, wanted
        super().__init__(f"tag {repo}:{tag} exists with {existing} (copying {wanted})")


class PlatformFilterError(CopyError):
    """The platform filter selects nothing, or a subset that cannot keep the digest."""


class InvalidReference(CopyError):
    """A repository name, tag or digest is malformed."""


class UnsupportedManifest(CopyError):
    """The source manifest has a media type or shape the engine cannot copy."""


class DescriptorMismatch(CopyError):
    """A manifest's descriptor (size, media type) disagrees with what the destination already
    holds under that digest: the manifest lies, and is never committed."""
