"""options.source_tag: the destination tag is written only while the source tag still names
the digest that was copied (a newer push of the tag wins; the job ends SUPERSEDED)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any


class SourceTagMoved(Exception):
    """The source tag no longer points at the copied digest; nothing was tagged."""

    def __init__(self, repository: str, tag: str, copied: str, now: str | None) -> None:
        self.repository, self.tag, self.copied, self.now = repository, tag, copied, now
        where = f"{repository}:{tag}"
        if now is None:
            text = f"source tag {where} no longer exists (copied {copied}); nothing was tagged"
        else:
            text = (
                f"superseded: source tag {where} now points to {now}, not the copied "
                f"{copied}; the destination tag was left as it was"
            )
        super().__init__(text)


def tag_check(src: Any, repository: str, tag: str) -> Callable[[str], Awaitable[None]]:
    """The engine's `before_tag` hook: HEAD `repository:tag` at the source (`src`, a
    RegistryClient) and raise SourceTagMoved unless it names the copied digest."""

    async def check(copied: str) -> None:
        head = await src.head_manifest(repository, tag)
        now = head.digest if head is not None else None
        if head is not None and not now:
            # A registry that sends no Docker-Content-Digest: hash the manifest itself.
            now = (await src.get_manifest(repository, tag)).digest
        if now != copied:
            raise SourceTagMoved(repository, tag, copied, now)

    return check
