"""The policy store and trusted-key store on both engines (SQLite file, PostgreSQL schema
"policy"): CRUD, name clashes, byte-order paging, the change log replicas reload from."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from policy_service import changes
from policy_service.changes import StaleView
from policy_service.store import (
    MIGRATIONS,
    EtagMismatch,
    NameTaken,
    PolicyMissing,
    PolicyRecord,
    PolicyStore,
)
from policy_service.trusted_keys import KeyExists, KeyStore, TrustedKey, parse_public_key
from tests.policy.signing import new_key, public_pem


def _rec(i: int | str, **kw: object) -> PolicyRecord:
    base: dict[str, object] = dict(
        id=f"id{i}", name=f"name{i}", description="", source_repository="dev/website",
        source_endpoint="dev", rule="true", target_endpoint="qa",
        target_repository="qa/website", tag_template="%n", time_zone="", enabled=True,
        create_time_us=1, update_time_us=1, etag=f"1-{i}", version=1,
        platforms=("linux/amd64",), copy_referrers=("signatures",),
        allow_incomplete_facts=True, signature_wait_us=5_000_000_000,
    )
    base.update(kw)
    return PolicyRecord(**base)  # type: ignore[arg-type]


def _key(name: str) -> TrustedKey:
    pem = public_pem(new_key())
    key, algorithm, fingerprint = parse_public_key(pem)
    return TrustedKey(name=name, public_key_pem=pem, algorithm=algorithm,
                      fingerprint=fingerprint, create_time_us=time.time_ns() // 1000, key=key)


def test_policies_round_trip_clash_and_survive_reopen(db_target: str, tmp_path: Path) -> None:
    store = PolicyStore.open(tmp_path, db_target)
    try:
        assert store.db.schema_version == len(MIGRATIONS)
        store.insert(_rec(1))
        store.insert(_rec(2, enabled=False))
        with pytest.raises(NameTaken):
            store.insert(_rec(3, name="name1"))
        with pytest.raises(NameTaken):
            store.update(_rec(2, name="name1", etag="2-x", version=2), expected_etag="1-2")
        with pytest.raises(EtagMismatch):
            store.update(_rec(2, etag="2-x", version=2), expected_etag="stale")
        with pytest.raises(PolicyMissing):
            store.delete("nope")
        assert store.get("id1") == _rec(1)  # every field, bools and tuples included
        assert store.get("id2") == _rec(2, enabled=False)
        assert store.id_of("name2") == "id2" and store.id_of("x") is None
        assert store.name_exists("name1") and not store.name_exists("name1", except_id="id1")
    finally:
        store.close()
    again = PolicyStore.open(tmp_path, db_target)
    try:
        assert sorted(r.id for r in again.all()) == ["id1", "id2"]
        again.delete("id1", expected_etag="1-1")
        assert [r.id for r in again.all()] == ["id2"]
    finally:
        again.close()


def test_pages_in_byte_order_among_ids(db_target: str, tmp_path: Path) -> None:
    store = PolicyStore.open(tmp_path, db_target)
    try:
        # Byte order puts upper case first; a locale's collation would not.
        names = ["b-two", "B-one", "a-three", "_under", "Z"]
        store.insert_many(_rec(n, name=n) for n in names)
        assert [r.name for r in store.page("", 3)] == ["B-one", "Z", "_under"]
        assert [r.name for r in store.page("_under", 10)] == ["a-three", "b-two"]
        picked = {"idb-two", "idZ", "idmissing"}
        assert [r.name for r in store.page("", 10, only_ids=picked)] == ["Z", "b-two"]
        assert store.page("", 10, only_ids=set()) == []
        many = store.get_many(["idZ", "idmissing"])
        assert many == {"idZ": _rec("Z", name="Z"), "idmissing": None}
        assert set(store.get_many(None)) == {f"id{n}" for n in names}
    finally:
        store.close()


def test_every_write_is_logged_and_a_stale_writer_is_refused(
    db_target: str, tmp_path: Path
) -> None:
    a = PolicyStore.open(tmp_path, db_target)
    b = PolicyStore.open(tmp_path, db_target)  # a second process's connection
    keys = KeyStore(b.db)
    try:
        start = a.change_seq()
        assert a.changes_since(start) is None
        seq = a.insert(_rec(1), expected_seq=start)
        assert seq == start + 1 == b.change_seq()
        seq = keys.insert(_key("release"), expected_seq=seq)
        got = b.changes_since(start)
        assert got is not None and not got.everything
        assert (got.seq, got.policies, got.keys) == (seq, {"id1"}, {"release"})
        # A writer whose checks saw an older seq changes nothing.
        with pytest.raises(StaleView):
            b.update(_rec(1, description="late", etag="2-x", version=2), "1-1", expected_seq=start)
        with pytest.raises(StaleView):
            b.delete("id1", expected_seq=start)
        with pytest.raises(StaleView):
            keys.delete("release", expected_seq=start)
        assert a.get("id1") == _rec(1) and a.change_seq() == seq
        seq = b.update(_rec(1, description="now", etag="2-x", version=2), "1-1", seq)
        seq = b.delete("id1", expected_seq=seq)
        assert keys.delete("release", expected_seq=seq) == seq + 1
        assert keys.delete("release") is None  # nothing to delete: nothing logged
        got = a.changes_since(start + 2)
        assert got is not None and (got.policies, got.keys) == ({"id1"}, {"release"})
        assert a.get_many(got.policies) == {"id1": None}
        assert keys.read(got.keys) == {"release": None}
        with pytest.raises(KeyExists):
            keys.insert(_key("dup"))
            keys.insert(_key("dup"))
    finally:
        a.close()
        b.close()


def test_a_replica_behind_the_pruned_log_reloads_everything(
    db_target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(changes, "KEEP", 3)
    monkeypatch.setattr(changes, "PRUNE_EVERY", 2)
    store = PolicyStore.open(tmp_path, db_target)
    try:
        for i in range(8):
            store.insert(_rec(i))
        row = store.db.query_one("SELECT count(*) FROM changes")
        assert row is not None and row[0] <= 5  # pruned as it went
        assert store.changes_since(0) == changes.Changes(seq=8, everything=True)
        recent = store.changes_since(6)
        assert recent is not None and recent.policies == {"id6", "id7"} and recent.seq == 8
    finally:
        store.close()


def test_a_database_of_the_previous_schema_keeps_its_policies_and_keys(
    db_target: str, tmp_path: Path
) -> None:
    from servicekit.db import Database

    old = Database(db_target, MIGRATIONS[:3], schema="policy")  # before the change log
    key = _key("ci")
    with old.transaction() as c:
        for name in ("b", "B", "a"):
            c.execute(
                "INSERT INTO policies (id, name, description, source_repository, rule, "
                "target_endpoint, target_repository, tag_template, time_zone, enabled, "
                "create_time_us, update_time_us, etag, version, source_endpoint) VALUES "
                "(?, ?, '', 'dev/app', 'true', 'qa', 'qa/app', '%n', '', 1, 1, 2, 'e', 1, 'dev')",
                (f"id-{name}", name),
            )
        c.execute(
            "INSERT INTO trusted_keys (name, public_key_pem, algorithm, fingerprint, "
            "create_time_us) VALUES (?, ?, ?, ?, ?)",
            (key.name, key.public_key_pem, key.algorithm, key.fingerprint, key.create_time_us),
        )
    old.close()
    store = PolicyStore.open(tmp_path, db_target)
    try:
        assert store.db.schema_version == len(MIGRATIONS)
        assert [r.name for r in store.page("", 10)] == ["B", "a", "b"]
        assert store.change_seq() == 0 and store.changes_since(0) is None
        assert KeyStore(store.db).get("ci") == key
    finally:
        store.close()
