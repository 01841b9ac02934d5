"""Policies stored before sources named an endpoint: the schema migration keeps every row,
and at start (once the transfer service answers) each gets the one endpoint that fits, or is
disabled with the reason and the candidates."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import grpc
from google.protobuf import field_mask_pb2
from mirror.v1 import common_pb2, policy_pb2, policy_pb2_grpc

from policy_service.store import MIGRATIONS, PolicyStore
from servicekit.retry import Backoff
from tests.policy.policy_servicer_support import (  # noqa: F401  (fixtures)
    PolicyEnv,
    TransferDouble,
    serving,
    start_policy_process,
    transfer_double,
)

# The policy store's schema at the commit before sources had endpoints (version 1), verbatim.
HEAD_SCHEMA = """
    CREATE TABLE policies (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        description TEXT NOT NULL DEFAULT '',
        source_repository TEXT NOT NULL,
        rule TEXT NOT NULL,
        target_endpoint TEXT NOT NULL,
        target_repository TEXT NOT NULL,
        tag_template TEXT NOT NULL,
        time_zone TEXT NOT NULL DEFAULT '',
        enabled INTEGER NOT NULL,
        create_time_us INTEGER NOT NULL,
        update_time_us INTEGER NOT NULL,
        etag TEXT NOT NULL,
        version INTEGER NOT NULL
    );
    CREATE INDEX policies_source ON policies(source_repository);
"""
OLD_TIME_US = 1_700_000_000_000_000
# (id, source_repository, rule, target_endpoint, target_repository, tag_template, enabled)
OLD_ROWS = [
    # The README's shape: the one endpoint other than its target becomes the source.
    ("a-readme", "team/website", "true", "qa", "qa/team/website", "%Y%m%d-%H%M%S", 1),
    # Targets an endpoint nobody registered: dev and qa could both be the source.
    ("c-two", "team/api", "true", "prod", "team/api", "%n", 1),
    # Reads qa, writes back to dev what a-readme reads: a cycle that makes tags.
    ("b-back", "qa/team/website", "true", "dev", "team/website", "%n", 1),
    # A glob onto one repository, which is refused now.
    ("d-fan-in", "team/**", "true", "qa", "qa/all", "%n", 1),
    # Disabled: migrated, stays disabled, no reason.
    ("e-off", "team/off", "true", "qa", "qa/off", "%n", 0),
    # A rule this version cannot compile: migrated too, still not evaluated.
    ("f-broken", "team/broken", "no_such_field == 1", "qa", "qa/broken", "%n", 1),
]


def write_old_database(data: Path) -> None:
    """A policy.sqlite3 as the previous version left it (schema version 1)."""
    data.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(data / "policy.sqlite3")
    conn.executescript(HEAD_SCHEMA)
    for i, (pid, src, rule, te, tr, template, enabled) in enumerate(OLD_ROWS):
        conn.execute(
            "INSERT INTO policies VALUES (?, ?, '', ?, ?, ?, ?, ?, '', ?, ?, ?, ?, 1)",
            (pid, pid, src, rule, te, tr, template, enabled, OLD_TIME_US, OLD_TIME_US + i,
             f"1-{pid}"),
        )
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()


async def _get(env: PolicyEnv, pid: str) -> policy_pb2.Policy:
    return await env.stub.GetPolicy(policy_pb2.GetPolicyRequest(id=pid))


async def _evaluated(env: PolicyEnv, endpoint: str, repository: str) -> list[str]:
    resp = await env.stub.Evaluate(policy_pb2.EvaluateRequest(
        endpoint=endpoint, facts=common_pb2.ImageFacts(repository=repository, tag="1.0"),
    ))
    return [r.policy_name for r in resp.results]


async def test_old_database_is_migrated_once_the_transfer_service_answers(
    tmp_path: Path, transfer_double: tuple[TransferDouble, int]  # noqa: F811
) -> None:
    write_old_database(tmp_path)
    double, _ = transfer_double
    double.list_down = 10**6  # not answering yet
    fast = Backoff(base=0.01, cap=0.05)
    async with serving(tmp_path, transfer_double, migration_backoff=fast) as env:
        # Every row was kept; unmigrated policies are listed but match nothing anywhere.
        listed = await env.stub.ListPolicies(policy_pb2.ListPoliciesRequest())
        assert [p.id for p in listed.policies] == sorted(r[0] for r in OLD_ROWS)
        assert all(p.source.endpoint == "" for p in listed.policies)
        assert all(p.source_repository == "" for p in listed.policies)
        assert await _evaluated(env, "dev", "team/website") == []
        deadline = time.monotonic() + 10
        while double.list_calls < 3:  # it keeps asking
            assert time.monotonic() < deadline, "the migration stopped asking"
            await asyncio.sleep(0.01)
        double.list_down = 0
        await asyncio.wait_for(env.servicer.migrated(), 10)

        readme = await _get(env, "a-readme")
        assert (readme.source.endpoint, readme.source.repository) == ("dev", "team/website")
        assert readme.enabled and readme.disabled_reason == ""
        # Enabled before the upgrade: active since its last update, not since now.
        assert readme.active_since.ToMicroseconds() == OLD_TIME_US
        assert await _evaluated(env, "dev", "team/website") == ["a-readme"]
        assert await _evaluated(env, "qa", "team/website") == []

        two = await _get(env, "c-two")
        assert not two.enabled and two.source.endpoint == ""
        assert two.disabled_reason.startswith("source migration: ")
        assert "2 endpoints could be the source (dev, qa)" in two.disabled_reason

        back = await _get(env, "b-back")
        assert not back.enabled and back.source.endpoint == "qa"
        assert "policy b-back (qa/qa/team/website -> dev/team/website) -> policy a-readme" in (
            back.disabled_reason
        )

        fan_in = await _get(env, "d-fan-in")
        assert not fan_in.enabled and fan_in.source.endpoint == "dev"
        assert "would map many repositories" in fan_in.disabled_reason

        off = await _get(env, "e-off")
        assert (off.enabled, off.source.endpoint, off.disabled_reason) == (False, "dev", "")

        broken = await _get(env, "f-broken")
        assert broken.source.endpoint == "dev" and broken.enabled
        [r] = (await env.stub.Evaluate(policy_pb2.EvaluateRequest(
            endpoint="dev", facts=common_pb2.ImageFacts(repository="team/broken", tag="1"),
        ))).results
        assert not r.matched and "no longer compiles" in r.reason

        # A person settles c-two: naming the source and enabling clears the reason.
        fixed = await env.stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(
                id="c-two", enabled=True,
                source=policy_pb2.PolicySource(endpoint="qa"),
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["source.endpoint", "enabled"]),
        ))
        assert (fixed.enabled, fixed.source.endpoint, fixed.disabled_reason) == (
            True, "qa", ""
        )
        assert fixed.active_since == fixed.update_time
        listed = await env.stub.ListPolicies(policy_pb2.ListPoliciesRequest())
        assert len(listed.policies) == len(OLD_ROWS)

    store = PolicyStore.open(tmp_path)
    assert store.db.schema_version == len(MIGRATIONS)
    versions = {r.id: r.version for r in store.all()}
    store.close()
    # A second start finds nothing to migrate and changes nothing.
    async with serving(tmp_path, transfer_double) as env:
        await asyncio.wait_for(env.servicer.migrated(), 10)
        store = env.servicer._store
        assert {r.id: r.version for r in store.all()} == versions


async def test_no_other_endpoint_disables_the_policy(
    tmp_path: Path, transfer_double: tuple[TransferDouble, int]  # noqa: F811
) -> None:
    write_old_database(tmp_path)
    double, _ = transfer_double
    double.endpoints = {"qa"}
    async with serving(tmp_path, transfer_double) as env:
        await asyncio.wait_for(env.servicer.migrated(), 10)
        readme = await _get(env, "a-readme")
        assert not readme.enabled
        assert "no endpoint other than the target 'qa' is registered" in readme.disabled_reason


async def test_python_m_policy_service_migrates_at_start(
    tmp_path: Path, transfer_double: tuple[TransferDouble, int]  # noqa: F811
) -> None:
    write_old_database(tmp_path)
    _, port = transfer_double
    p = start_policy_process(tmp_path, "--transfer-address", f"127.0.0.1:{port}")
    try:
        async with grpc.aio.insecure_channel(p.address) as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            deadline = time.monotonic() + 30
            while True:
                got = await stub.GetPolicy(policy_pb2.GetPolicyRequest(id="a-readme"), timeout=10)
                if got.source.endpoint:
                    break
                assert time.monotonic() < deadline, "not migrated within 30 s"
                await asyncio.sleep(0.05)
        assert got.source.endpoint == "dev" and got.enabled
    finally:
        p.stop()
