"""The patterns the loop and collision checks compare are conservative: whenever a real
repository name is matched by two of them, they are said to overlap (never the reverse
mistake), and rendering, {path} and the inverse mapping agree with each other."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_service import mapping
from policy_service.index import glob_to_regex
from policy_service.validate import source_error

SEGMENTS = ["team", "a", "b", "*", "**", "t*", "*b", "app"]
NAMES = ["team", "a", "b", "tb", "app", "x"]

globs = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4).map("/".join).filter(
    lambda g: source_error(g) is None
)
repos = st.lists(st.sampled_from(NAMES), min_size=1, max_size=5).map("/".join)
targets = st.sampled_from([
    "m/{path}", "m/{repository}", "{path}", "{repository}", "x-{path}", "m/{path}/c",
    "{repository}/{path}",
])


def _matches(glob: str, repository: str) -> bool:
    return re.fullmatch(glob_to_regex(glob), repository) is not None


@settings(max_examples=300, deadline=None)
@given(g1=globs, g2=globs, names=st.lists(repos, min_size=1, max_size=8))
def test_two_globs_sharing_a_name_overlap(g1: str, g2: str, names: list[str]) -> None:
    p1, p2 = mapping.glob_pattern(g1), mapping.glob_pattern(g2)
    for name in names:
        if _matches(g1, name) and _matches(g2, name):
            assert mapping.overlap(p1, p2), (g1, g2, name)
            assert mapping.overlap(p1, name) and mapping.overlap(name, p2)


@settings(max_examples=300, deadline=None)
@given(source=globs, target=targets, names=st.lists(repos, min_size=1, max_size=8))
def test_every_rendered_destination_is_in_the_destination_pattern(
    source: str, target: str, names: list[str]
) -> None:
    dest = mapping.destination_pattern(source, target)
    for name in names:
        if not _matches(source, name):
            continue
        rendered = mapping.render_for(source, target, name)
        assert mapping.overlap(dest, rendered), (source, target, name, rendered)
        # The inverse finds the name again, or admits it cannot tell; never another one.
        assert mapping.preimage(source, target, rendered) in (name, None)


@pytest.mark.parametrize(
    ("p", "q", "expected"),
    [
        ("team/a", "team/a", True),
        ("team/a", "team/b", False),
        (mapping.glob_pattern("team/*"), "team/a/b", False),  # '*' stays in its segment
        (mapping.glob_pattern("team/**"), "team/a/b", True),
        (mapping.glob_pattern("a/**/b"), "a/b", True),
        (mapping.glob_pattern("**/app"), "app", True),
        (mapping.glob_pattern("dev/*"), mapping.glob_pattern("qa/*"), False),
        (mapping.glob_pattern("t*/x"), mapping.glob_pattern("*m/x"), True),  # "tm/x"
    ],
)
def test_overlap_examples(p: str, q: str, expected: bool) -> None:
    assert mapping.overlap(p, q) is expected
    assert mapping.overlap(q, p) is expected


def test_path_is_what_the_glob_matched() -> None:
    assert mapping.path_of("team/**", "team/sub/b") == "sub/b"
    assert mapping.path_of("team/*", "team/a") == "a"
    assert mapping.path_of("**/app", "x/app") == "x/app"
    assert mapping.path_of("team/app", "team/app") == ""
    assert mapping.examples("team/**") == ("team/a", "team/b/c")
