"""The source index (exact names and RE2-compiled globs) and the SQLite policy store."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policy_service.index import SourceIndex, glob_to_regex
from policy_service.store import (
    MIGRATIONS,
    EtagMismatch,
    NameTaken,
    PolicyMissing,
    PolicyRecord,
    PolicyStore,
)
from policy_service.validate import source_error


def reference_match(glob: str, repository: str) -> bool:
    """Glob semantics written out segment by segment, independent of the regex translation."""

    def go(pat: list[str], name: list[str]) -> bool:
        if not pat:
            return not name
        head, rest = pat[0], pat[1:]
        if head == "**":
            least = 1 if not rest else 0  # a trailing '**' stands for something below
            return any(go(rest, name[i:]) for i in range(least, len(name) + 1))
        return bool(name) and fnmatch.fnmatchcase(name[0], head) and go(rest, name[1:])

    return go(glob.split("/"), repository.split("/"))


@pytest.mark.parametrize(
    ("glob", "yes", "no"),
    [
        ("dev/*", ["dev/website", "dev/a"], ["dev", "dev/a/b", "prod/a"]),
        ("dev/**", ["dev/website", "dev/a/b/c"], ["dev", "development/x"]),
        ("**/website", ["website", "dev/website", "a/b/website"], ["dev/websites"]),
        ("a/**/b", ["a/b", "a/x/b", "a/x/y/b"], ["a/x/c", "b"]),
        ("dev/web*", ["dev/web", "dev/website"], ["dev/x/website", "dev/api"]),
        ("*/website", ["dev/website"], ["website", "a/b/website"]),
        ("dev.team/*", ["dev.team/x"], ["devxteam/x"]),  # '.' is literal
    ],
)
def test_glob_semantics(glob: str, yes: list[str], no: list[str]) -> None:
    assert source_error(glob) is None
    idx = SourceIndex()
    idx.put("p", glob)
    for name in yes:
        assert idx.match(name) == {"p"}, (glob, name)
        assert reference_match(glob, name)
    for name in no:
        assert idx.match(name) == set(), (glob, name)
        assert not reference_match(glob, name)


def test_regex_translation_is_anchored_segment_wise() -> None:
    assert glob_to_regex("dev/*") == "dev/[^/]+"
    assert glob_to_regex("dev/**") == "dev/.+"


SEGMENTS = ["dev", "web", "a", "*", "**", "w*", "*b"]
NAMES = ["dev", "web", "a", "website", "wb", "b"]

globs = st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4).map("/".join).filter(
    lambda g: source_error(g) is None
)
repos = st.lists(st.sampled_from(NAMES), min_size=1, max_size=5).map("/".join)


@settings(max_examples=150, deadline=None)
@given(
    sources=st.lists(st.one_of(globs, repos), min_size=1, max_size=25),
    removed=st.sets(st.integers(0, 24)),
    probes=st.lists(repos, min_size=1, max_size=10),
)
def test_index_agrees_with_a_scan(sources: list[str], removed: set[int], probes: list[str]) -> None:
    idx = SourceIndex()
    live = {}
    for i, src in enumerate(sources):
        idx.put(str(i), src)
        live[str(i)] = src
    for i in removed:
        idx.remove(str(i))
        live.pop(str(i), None)
    assert len(idx) == len(live)
    for name in probes:
        expected = {
            pid for pid, src in live.items()
            if src == name or ("*" in src and reference_match(src, name))
        }
        assert idx.match(name) == expected, name


def test_moving_a_policy_to_another_source() -> None:
    idx = SourceIndex()
    idx.put("p", "dev/*")
    idx.put("q", "dev/*")
    assert idx.match("dev/x") == {"p", "q"}
    idx.put("p", "prod/**")
    assert idx.match("dev/x") == {"q"}
    assert idx.match("prod/x/y") == {"p"}
    idx.remove("q")
    idx.remove("q")  # removing twice is harmless
    assert idx.match("dev/x") == set()


def _rec(i: int, **kw: object) -> PolicyRecord:
    base = dict(
        id=f"id{i}", name=f"name{i}", description="", source_repository="dev/website",
        source_endpoint="dev",
        rule="true", target_endpoint="qa", target_repository="qa/website", tag_template="%n",
        time_zone="", enabled=True, create_time_us=1, update_time_us=1, etag=f"1-{i}",
        version=1,
    )
    base.update(kw)
    return PolicyRecord(**base)  # type: ignore[arg-type]


def test_store_survives_reopen_and_keeps_its_schema_version(tmp_path: Path) -> None:
    store = PolicyStore.open(tmp_path)
    assert store.db.schema_version == len(MIGRATIONS)
    store.insert(_rec(1, description="kept", enabled=False))
    store.close()
    again = PolicyStore.open(tmp_path)
    assert again.all() == [_rec(1, description="kept", enabled=False)]
    again.close()


def test_store_refuses_clashes_and_stale_etags(tmp_path: Path) -> None:
    store = PolicyStore.open(tmp_path)
    store.insert(_rec(1))
    store.insert(_rec(2))
    with pytest.raises(NameTaken):
        store.insert(_rec(3, name="name1"))
    with pytest.raises(NameTaken):
        store.update(_rec(2, name="name1", etag="2-x", version=2), expected_etag="1-2")
    with pytest.raises(EtagMismatch):
        store.update(_rec(2, description="x", etag="2-x", version=2), expected_etag="0-stale")
    with pytest.raises(PolicyMissing):
        store.update(_rec(9), expected_etag="1-9")
    with pytest.raises(EtagMismatch):
        store.delete("id1", expected_etag="nope")
    assert sorted(r.name for r in store.all()) == ["name1", "name2"]
    assert store.get("id2") == _rec(2)  # the refused updates changed nothing
    store.delete("id1")
    with pytest.raises(PolicyMissing):
        store.delete("id1")
    store.close()


def test_store_pages_by_name(tmp_path: Path) -> None:
    store = PolicyStore.open(tmp_path)
    store.insert_many(_rec(i) for i in range(5))
    assert [r.name for r in store.page("", 2)] == ["name0", "name1"]
    assert [r.name for r in store.page("name1", 2)] == ["name2", "name3"]
    assert [r.name for r in store.page("", 10, only_ids={"id4", "id0"})] == ["name0", "name4"]
    assert store.page("", 10, only_ids=set()) == []
    store.close()
