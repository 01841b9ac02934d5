"""argparse helpers: commands with examples and exit codes in their help, image references."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
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
) -> argparse.ArgumentParser:
    """A sub-command whose --help ends with examples and the exit codes."""
    p = sub.add_parser(
        name,
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
    reference: str

    def __str__(self) -> str:
        sep = "@" if self.reference.startswith("sha256:") else ":"
        return f"{self.endpoint}/{self.repository}{sep}{self.reference}"


_REF_RE = re.compile(r"^(?P<ep>[a-z0-9][a-z0-9_-]*)/(?P<repo>[^:@\s]+)(?:(?::|@)(?P<ref>\S+))?$")


def image_ref(text: str, *, need_reference: bool = True, what: str = "image") -> ImageRef:
    """Parse `endpoint/repository:tag` or `endpoint/repository@sha256:...`."""
    m = _REF_RE.match(text)
    if not m or (need_reference and not m.group("ref")):
        form = "ENDPOINT/REPOSITORY:TAG" if need_reference else "ENDPOINT/REPOSITORY[:TAG]"
        raise CliError(
            f"{what} {text!r} is not of the form {form}",
            hint="for example qa/team/website:1.4 (endpoint 'qa', repository 'team/website')",
        )
    return ImageRef(m.group("ep"), m.group("repo"), m.group("ref") or "")
