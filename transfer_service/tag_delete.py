"""Delete one tag at a registry without taking other tags of the same image with it.

Distribution 2.8.2 cannot delete a tag, only a manifest by digest, which removes every tag
that points at it. So a tag is deleted only when it still holds the digest the caller expects
and no other tag of the repository holds that digest too.
"""

from __future__ import annotations

from typing import Any

from registry_client import errors as rc_errors
from servicekit.errors import (
    failed_precondition,
    permission_denied,
    unauthenticated,
    unavailable,
)


async def delete_tag(rc: Any, repo: str, tag: str, digest: str) -> bool:
    """Delete `repo:tag` (which must hold `digest`); False when it was already gone.

    Registry errors become the matching status (the registry refusing deletes, as a registry
    without `storage.delete.enabled` does, is FAILED_PRECONDITION).
    """
    try:
        return await _delete(rc, repo, tag, digest)
    except rc_errors.AuthenticationError as exc:
        raise unauthenticated(f"the registry refused the credentials: {exc}") from exc
    except rc_errors.PermissionDenied as exc:
        raise permission_denied(f"the registry does not allow deleting {repo}: {exc}") from exc
    except (rc_errors.ConnectError, rc_errors.TooManyRequests) as exc:
        raise unavailable(f"the registry cannot be reached: {exc}") from exc
    except rc_errors.RegistryError as exc:
        raise failed_precondition(
            f"the registry refused to delete {repo}:{tag}: {exc}", reason="DELETE_REFUSED"
        ) from exc


async def _delete(rc: Any, repo: str, tag: str, digest: str) -> bool:
    held = await rc.head_manifest(repo, tag)
    if held is None:
        return False
    if held.digest != digest:
        raise failed_precondition(
            f"{repo}:{tag} holds {held.digest}, not {digest}: not deleted",
            [("DIGEST", f"{repo}:{tag}", f"holds {held.digest}")],
            reason="TAG_MOVED",
        )
    shared = []
    for other in await rc.list_tags(repo):
        if other == tag:
            continue
        d = await rc.head_manifest(repo, other)
        if d is not None and d.digest == digest:
            shared.append(other)
    if shared:
        raise failed_precondition(
            f"{repo}:{tag} is not deleted: tag(s) {', '.join(sorted(shared)[:5])} hold the same "
            "image, and the registry can only delete the image with all its tags",
            [("SHARED", f"{repo}:{t}", "holds the same digest") for t in sorted(shared)[:20]],
            reason="TAG_SHARED",
        )
    try:
        await rc.delete_manifest(repo, digest)
    except rc_errors.NotFound:
        return False
    return True
