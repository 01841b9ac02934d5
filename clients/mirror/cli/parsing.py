"""argparse helpers: commands with examples and exit codes in their help, image references."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mirror.cli.context import EXIT_CODES_HELP, CliError, Context

Handler = Callable[[Context], int]


def command(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    *,
    help: str,
    examples: str,
    common: argparse.ArgumentParser,
    func: Handler | None = None,
    aliases: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """A sub-command whose --help ends with examples and the exit codes."""
    p = sub.add_parser(
        name,
        aliases=list(aliases),
        help=help,
        description=help,
        epilog=f"examples:\n{examples.rstrip()}\n\n{EXIT_CODES_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
        allow_abbrev=False,
    )
    if func is not None:
        p.set_defaults(func=func)
    else:
        p.set_defaults(func=_group_help(p))
    return p


def _group_help(p: argparse.ArgumentParser) -> Handler:
    def show(ctx: Context) -> int:
        p.print_help()
        return 2

    return show


@dataclass(frozen=True)
class ImageRef:
    endpoint: str
    repository: str
    tag: str = ""
    digest: str = ""

    @property
    def reference(self) -> str:
        """What to read: the digest when one is given (it pins the image), else the tag."""
        return self.digest or self.tag

    def __str__(self) -> str:
        text = image_text(self.endpoint, self.repository, self.tag)
        return f"{text}@{self.digest}" if self.digest else text


def image_text(endpoint: str, repository: str, reference: str) -> str:
    """`endpoint/repository:tag`, `endpoint/repository@sha256:...`, or without a reference."""
    if not reference:
        return f"{endpoint}/{repository}"
    sep = "@" if reference.startswith("sha256:") else ":"
    return f"{endpoint}/{repository}{sep}{reference}"


_REF_RE = re.compile(
    r"^(?P<ep>[a-z0-9][a-z0-9_-]*)/(?P<repo>[^:@\s]+)(?::(?P<tag>[^:@\s]+))?"
    r"(?:@(?P<digest>\S+))?$"
)
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def image_ref(
    text: str, *, need_reference: bool = True, what: str = "image", digest_ok: bool = True
) -> ImageRef:
    """Parse `endpoint/repository:tag`, `endpoint/repository@sha256:...` or both
    (`...:tag@sha256:...`: the digest is read, the tag names it)."""
    m = _REF_RE.match(text)
    if not m or (need_reference and not (m.group("tag") or m.group("digest"))):
        form = "ENDPOINT/REPOSITORY:TAG" if need_reference else "ENDPOINT/REPOSITORY[:TAG]"
        raise CliError(
            f"{what} {text!r} is not of the form {form} (or ...@sha256:DIGEST)",
            hint="for example qa/team/website:1.4 (endpoint 'qa', repository 'team/website')",
        )
    digest = m.group("digest") or ""
    if digest and not digest_ok:
        raise CliError(f"{what} {text!r}: a digest cannot be a destination",
                       hint="give ENDPOINT/REPOSITORY[:TAG]")
    if digest and not _DIGEST_RE.match(digest):
        raise CliError(f"{what} {text!r}: {digest!r} is not sha256: and 64 lowercase hex digits")
    return ImageRef(m.group("ep"), m.group("repo"), m.group("tag") or "", digest)


def location(text: str, *, what: str) -> ImageRef:
    """Parse `endpoint/repository` (a policy's source or target: no tag; globs and `{path}`
    allowed)."""
    ref = image_ref(text, need_reference=False, what=what)
    if ref.reference or text.endswith(("@", ":")):
        raise CliError(
            f"{what} {text!r} names a tag or digest; give ENDPOINT/REPOSITORY",
            hint="for example dev/team/website, dev/team/** or qa/mirror/{path}",
        )
    return ref
