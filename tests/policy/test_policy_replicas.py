"""Several policy-service replicas on one PostgreSQL database: what one writes, the others
serve at once (policy_service.changes), and the save checks hold across them."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc import aio
from mirror.v1 import common_pb2, policy_pb2, policy_pb2_grpc

from policy_service.servicer import PolicyServicer
from policy_service.store import PolicyRecord, PolicyStore
from registry_testkit.ports import free_port
from servicekit.server import start_server
from tests.policy.policy_servicer_support import policy, start_policy_process
from tests.policy.signing import new_key, public_pem


@dataclass
class Replica:
    stub: policy_pb2_grpc.PolicyServiceStub
    servicer: PolicyServicer
    store: PolicyStore


@asynccontextmanager
async def replica(pg_url: str, data: Path) -> AsyncIterator[Replica]:
    """A policy service on `pg_url` (its own --data folder), on a real grpc.aio server."""
    store = await asyncio.to_thread(PolicyStore.open, data, pg_url)
    servicer = PolicyServicer(store, None)
    running = await start_server([servicer], "127.0.0.1:0")
    channel = aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield Replica(policy_pb2_grpc.PolicyServiceStub(channel), servicer, store)
    finally:
        await channel.close()
        await running.stop(0)
        store.close()


async def evaluate(stub: policy_pb2_grpc.PolicyServiceStub) -> list[str]:
    resp = await stub.Evaluate(policy_pb2.EvaluateRequest(
        endpoint="dev", facts=common_pb2.ImageFacts(repository="dev/website", tag="1.0")))
    return [r.policy_name for r in resp.results if r.matched]


def _mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def test_what_one_replica_writes_the_other_serves(pg_url: str, tmp_path: Path) -> None:
    async with replica(pg_url, tmp_path / "a") as a, replica(pg_url, tmp_path / "b") as b:
        made = await a.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(
            policy=policy(rule="true")))
        assert (await b.stub.GetPolicy(policy_pb2.GetPolicyRequest(id=made.id))) == made
        assert (await b.stub.GetPolicy(policy_pb2.GetPolicyRequest(name=made.name))).id == made.id
        listed = await b.stub.ListPolicies(policy_pb2.ListPoliciesRequest(source_endpoint="dev"))
        assert [p.id for p in listed.policies] == [made.id]
        assert await evaluate(b.stub) == ["promote-website"]

        # Updated on b, a evaluates the new version; a's etag check uses it too.
        off = await b.stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(id=made.id, enabled=False), update_mask=_mask("enabled")))
        assert await evaluate(a.stub) == []
        with pytest.raises(grpc.RpcError) as stale:
            await a.stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
                policy=policy_pb2.Policy(id=made.id, etag=made.etag, description="x"),
                update_mask=_mask("description")))
        assert stale.value.code() == grpc.StatusCode.ABORTED

        # A key registered on a is known to b's save check, and b refuses to delete it while
        # a policy saved on a names it.
        await a.stub.CreateTrustedKey(policy_pb2.CreateTrustedKeyRequest(
            key=policy_pb2.TrustedKey(name="release", public_key_pem=public_pem(new_key()))))
        assert (await b.stub.GetTrustedKey(policy_pb2.GetTrustedKeyRequest(name="release"))).name
        signed = await b.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy(
            name="signed", source="dev/signed", target=common_pb2.Target(
                endpoint="qa", repository="qa/signed"), rule='signed_by "release"')))
        with pytest.raises(grpc.RpcError) as in_use:
            await a.stub.DeleteTrustedKey(policy_pb2.DeleteTrustedKeyRequest(name="release"))
        assert in_use.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        # Deleted on a: b no longer serves it.
        await a.stub.DeletePolicy(policy_pb2.DeletePolicyRequest(id=off.id))
        with pytest.raises(grpc.RpcError) as gone:
            await b.stub.GetPolicy(policy_pb2.GetPolicyRequest(id=off.id))
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        await b.stub.DeletePolicy(policy_pb2.DeletePolicyRequest(id=signed.id))
        await a.stub.DeleteTrustedKey(policy_pb2.DeleteTrustedKeyRequest(name="release"))
        keys = await b.stub.ListTrustedKeys(policy_pb2.ListTrustedKeysRequest())
        assert list(keys.keys) == []


async def test_colliding_policies_saved_at_once_on_two_replicas_keep_one(
    pg_url: str, tmp_path: Path
) -> None:
    async with replica(pg_url, tmp_path / "a") as a, replica(pg_url, tmp_path / "b") as b:
        # Different sources into one target repository: the second saved must be refused.
        results = await asyncio.gather(
            a.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy(name="one"))),
            b.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(
                policy=policy(name="two", source="dev/other"))),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, grpc.RpcError)]
        assert len(refused) == 1, results
        assert refused[0].code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "collides" in (refused[0].details() or "")
        for r in (a, b):
            listed = await r.stub.ListPolicies(policy_pb2.ListPoliciesRequest())
            assert len(listed.policies) == 1


async def test_a_write_between_the_check_and_the_commit_is_checked_again(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with replica(pg_url, tmp_path / "a") as a, replica(pg_url, tmp_path / "b") as b:
        rival = PolicyRecord(
            id="rival", name="rival", description="", source_endpoint="dev",
            source_repository="dev/other", rule="true", target_endpoint="qa",
            target_repository="qa/website", tag_template="%n", time_zone="", enabled=True,
            create_time_us=1, update_time_us=1, etag="1-r", version=1,
        )
        real_insert = b.store.insert
        raced: list[int] = []

        def insert_after_a_rival(rec: PolicyRecord, expected_seq: int | None = None) -> int:
            if not raced:  # another replica commits right after b's checks passed
                raced.append(a.store.insert(rival))
            return real_insert(rec, expected_seq)

        monkeypatch.setattr(b.store, "insert", insert_after_a_rival)
        with pytest.raises(grpc.RpcError) as refused:
            await b.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy()))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "rival" in (refused.value.details() or "")
        assert raced and [r.id for r in b.store.all()] == ["rival"]
        assert "rival" in b.servicer._policies  # the refused write's retry reloaded it


def test_two_processes_on_one_database_and_a_restart(pg_url: str, tmp_path: Path) -> None:
    db = ("--database", pg_url)
    first = start_policy_process(tmp_path / "one", *db, port=free_port())
    second = start_policy_process(tmp_path / "two", *db, port=free_port())
    try:
        with grpc.insecure_channel(first.address) as c1, \
                grpc.insecure_channel(second.address) as c2:
            s1, s2 = policy_pb2_grpc.PolicyServiceStub(c1), policy_pb2_grpc.PolicyServiceStub(c2)
            made = s1.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy(rule="true")),
                                   timeout=10)
            assert s2.GetPolicy(policy_pb2.GetPolicyRequest(id=made.id), timeout=10) == made
            resp = s2.Evaluate(policy_pb2.EvaluateRequest(
                endpoint="dev", facts=common_pb2.ImageFacts(repository="dev/website", tag="1")),
                timeout=10)
            assert [r.policy_id for r in resp.results if r.matched] == [made.id]
        first.stop(signal.SIGKILL)
        again = start_policy_process(tmp_path / "one", *db, port=free_port())
        try:
            with grpc.insecure_channel(again.address) as c:
                stub = policy_pb2_grpc.PolicyServiceStub(c)
                assert stub.GetPolicy(policy_pb2.GetPolicyRequest(id=made.id), timeout=10) == made
        finally:
            again.stop()
    finally:
        first.stop()
        second.stop()
