"""Target mapping: a target repository that may use `{repository}` and `{path}`.

`{repository}` is the whole source repository; `{path}` is the part the source glob matched,
i.e. the repository without the glob's literal leading segments (`team/**` and `team/sub/b`
give `sub/b`; `team/*` and `team/a` give `a`).

Besides rendering, this module describes the set of repositories a source or a target can
name as a *pattern* (literal characters plus two wildcards: one that stays within a path
segment and one that crosses them) so that loops and collisions can be found before a policy
is saved. Overlap is over-approximated: when two patterns might share a name they are treated
as overlapping, never the other way round.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from policy_service.index import glob_to_regex
from policy_service.validate import is_glob, repository_error

PLACEHOLDERS = ("repository", "path")
_BRACED_RE = re.compile(r"\{([^{}]*)\}")
# Pattern wildcards (never in a repository name): within one segment, and across segments.
STAR = "\x00"
ANY = "\x01"
_WILD = (STAR, ANY)


def placeholders(target: str) -> set[str]:
    return set(_BRACED_RE.findall(target))


def literal_prefix(source: str) -> str:
    """The glob's leading segments that hold no wildcard (the whole name when exact)."""
    out = []
    for seg in source.split("/"):
        if "*" in seg:
            break
        out.append(seg)
    return "/".join(out)


def path_of(source: str, repository: str) -> str:
    """The part of `repository` that the source glob matched ("" for an exact source)."""
    if not is_glob(source):
        return ""
    prefix = literal_prefix(source)
    return repository[len(prefix) + 1:] if prefix else repository


def render(target: str, repository: str, path: str) -> str:
    return target.replace("{repository}", repository).replace("{path}", path)


def render_for(source: str, target: str, repository: str) -> str:
    """The destination repository for `repository` (matched by `source`)."""
    return render(target, repository, path_of(source, repository))


def examples(source: str) -> tuple[str, str]:
    """Two distinct repositories a glob matches (for messages and the push check)."""

    def fill(star: str, stars: str) -> str:
        return "/".join(
            stars if seg == "**" else seg.replace("*", star) for seg in source.split("/")
        )

    return fill("a", "a"), fill("b", "b/c")


def target_error(source: str, target: str, fan_in: bool = False) -> str | None:
    """Why `target` cannot be the target repository of a policy reading `source`, or None.

    `fan_in` accepts a glob source mapped onto one repository (stored by older versions).
    """
    unknown = placeholders(target) - set(PLACEHOLDERS)
    if unknown:
        return (
            f"unknown placeholder {{{sorted(unknown)[0]}}} in {target!r}; "
            "use {repository} or {path}"
        )
    used = placeholders(target)
    bare = _BRACED_RE.sub("", target)
    if "{" in bare or "}" in bare:
        return f"{target!r}: braces are only allowed around {{repository}} or {{path}}"
    if "path" in used and not is_glob(source):
        return (
            f"{target!r} uses {{path}}, but the source {source!r} is not a glob: {{path}} is "
            "the part a glob matched; use {repository} or a glob source"
        )
    problem = repository_error(render(target, "a", "a")) if used else repository_error(target)
    if problem:
        return problem
    if is_glob(source) and not used and not fan_in:
        one, two = examples(source)
        return (
            f"the source glob {source!r} would map many repositories (e.g. {one!r} and "
            f"{two!r}) onto the one target {target!r}; use {{path}} or {{repository}} in "
            "the target, e.g. 'mirror/{path}'"
        )
    return None


def sample_target(source: str, target: str) -> str:
    """A concrete destination repository of the mapping (what the push check asks about)."""
    repo = examples(source)[0] if is_glob(source) else source
    return render_for(source, target, repo)


# --- patterns ------------------------------------------------------------------------------


def glob_pattern(glob: str) -> str:
    """The pattern of the names `glob` matches (a superset for `**`: it may match nothing)."""
    joined = "/".join(ANY if seg == "**" else seg.replace("*", STAR) for seg in glob.split("/"))
    # `a/**/b` also matches `a/b`, `**/x` also `x`: the '**' takes its slash with it.
    return joined.replace(ANY + "/", ANY)


def source_pattern(source: str) -> str:
    return glob_pattern(source)


def destination_pattern(source: str, target: str) -> str:
    """The pattern of every destination repository the policy can write to."""
    path = _path_glob(source)
    return render(target, glob_pattern(source), glob_pattern(path) if path else "")


def _path_glob(source: str) -> str:
    """The glob's part after its literal prefix ("" for an exact name)."""
    prefix = literal_prefix(source)
    return source[len(prefix) + 1:] if prefix else source


def is_literal(pattern: str) -> bool:
    return STAR not in pattern and ANY not in pattern


def overlap(p: str, q: str) -> bool:
    """Whether some name may match both patterns (True when unsure)."""
    if is_literal(p) and is_literal(q):
        return p == q
    n, m = len(p), len(q)
    seen = {(0, 0)}
    todo = [(0, 0)]
    while todo:
        i, j = todo.pop()
        if i == n and j == m:
            return True
        for nxt in _steps(p, q, i, j):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


def _absorbs(star: str, ch: str) -> bool:
    return ch in _WILD or star == ANY or ch != "/"


def _steps(p: str, q: str, i: int, j: int) -> Iterator[tuple[int, int]]:
    """Alignments one step on: a wildcard ends, or takes the other side's next character."""
    n, m = len(p), len(q)
    if i < n and p[i] in _WILD:
        yield i + 1, j
        if j < m and _absorbs(p[i], q[j]):
            yield i, j + 1
    if j < m and q[j] in _WILD:
        yield i, j + 1
        if i < n and _absorbs(q[j], p[i]):
            yield i + 1, j
    if i < n and j < m and p[i] not in _WILD and p[i] == q[j]:
        yield i + 1, j + 1


def preimage(source: str, target: str, destination: str) -> str | None:
    """The source repository the mapping writes into `destination`; "" when none does;
    None when it cannot be told (callers then assume the worst)."""
    groups: set[str] = set()
    parts: list[str] = []
    pos = 0
    prefix = literal_prefix(source)
    path_glob = _path_glob(source)
    for m in _BRACED_RE.finditer(target):
        parts.append(re.escape(target[pos:m.start()]))
        name = m.group(1)
        if name in groups:
            parts.append(f"(?P={name})")
        else:
            groups.add(name)
            rx = glob_to_regex(source if name == "repository" else path_glob)
            parts.append(f"(?P<{name}>{rx})")
        pos = m.end()
    parts.append(re.escape(target[pos:]))
    found = re.fullmatch("".join(parts), destination)
    if found is None:
        return ""  # a consistent preimage would have matched
    if "repository" in groups:
        repo = found.group("repository")
    else:
        path = found.group("path")
        repo = f"{prefix}/{path}" if prefix else path
    if not re.fullmatch(glob_to_regex(source), repo) or render_for(source, target, repo) != (
        destination
    ):
        return None
    return repo
