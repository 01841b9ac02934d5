"""Reference integrity of endpoints (issue 9, item 7): DeleteEndpoint is refused while a
policy uses the endpoint (asked of a real policy service over gRPC) and when the policy
service cannot be asked; a second endpoint for one registry is refused ALREADY_EXISTS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography.fernet import Fernet
from google.protobuf import field_mask_pb2
from grpc import aio
from mirror.v1 import common_pb2, policy_pb2, policy_pb2_grpc, transfer_pb2, transfer_pb2_grpc

from policy_service.servicer import PolicyServicer
from policy_service.store import PolicyStore
from registry_testkit.ports import free_port
from servicekit.server import start_server
from tests.transfer.transfer_support import Served, endpoint_msg, rpc_details
from transfer_service.endpoints import EndpointStore
from transfer_service.jobs import Journal
from transfer_service.schema import open_database
from transfer_service.secrets import SecretBox
from transfer_service.servicer import TransferServicer
from transfer_service.worker import Worker


@pytest.fixture
async def with_policies(tmp_path: Path) -> AsyncIterator[tuple[Served, aio.Channel]]:
    """Transfer and policy servicers on one server (as the stack mounts them); the transfer
    servicer asks the policy service over a channel to that server."""
    data = tmp_path / "data"
    db = open_database(data)
    store = EndpointStore(db, SecretBox([Fernet.generate_key()]))
    journal = Journal(db)
    port = free_port()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    transfer = TransferServicer(
        store, journal, Worker(journal, store, engine=None), policy_channel=channel
    )
    pstore = PolicyStore.open(tmp_path / "policy")
    policy = PolicyServicer(pstore, None)
    server = await start_server([transfer, policy], f"127.0.0.1:{port}")
    await policy.start()
    try:
        stub = transfer_pb2_grpc.TransferServiceStub(channel)
        yield Served(transfer, server, channel, stub, data), channel
    finally:
        await policy.stop()
        await channel.close()
        await server.stop(0)
        pstore.close()
        db.close()


async def _add(s: Served, name: str, url: str, **kw: object) -> transfer_pb2.Endpoint:
    return await s.stub.CreateEndpoint(
        transfer_pb2.CreateEndpointRequest(endpoint=endpoint_msg(name, url, **kw))
    )


async def _delete(s: Served, name: str) -> None:
    await s.stub.DeleteEndpoint(transfer_pb2.DeleteEndpointRequest(name=name))


async def test_delete_refused_while_a_policy_uses_the_endpoint(
    with_policies: tuple[Served, aio.Channel],
) -> None:
    s, channel = with_policies
    for name, port in (("dev", 5100), ("qa", 5101), ("prod", 5102), ("spare", 5103)):
        await _add(s, name, f"http://127.0.0.1:{port}")
    policies = policy_pb2_grpc.PolicyServiceStub(channel)
    created = []
    for pname, src, dst in (("dev-to-qa", "dev", "qa"), ("qa-to-prod", "qa", "prod")):
        created.append(
            await policies.CreatePolicy(
                policy_pb2.CreatePolicyRequest(
                    policy=policy_pb2.Policy(
                        name=pname,
                        source=policy_pb2.PolicySource(endpoint=src, repository="team/app"),
                        rule='tag == "1.0"',
                        target=common_pb2.Target(endpoint=dst, repository="mirror/app"),
                        enabled=True,
                    )
                )
            )
        )
    expected = {"dev": ["dev-to-qa"], "qa": ["dev-to-qa", "qa-to-prod"], "prod": ["qa-to-prod"]}
    for endpoint, names in expected.items():
        with pytest.raises(aio.AioRpcError) as info:
            await _delete(s, endpoint)
        code, _, pre = rpc_details(info.value)
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert sorted(v.subject for v in pre) == [f"policies/{n}" for n in names]
        assert all(v.type == "POLICY" for v in pre)
        assert all(n in info.value.details() for n in names)
    await _delete(s, "spare")  # unused: deleted
    await policies.DeletePolicy(policy_pb2.DeletePolicyRequest(id=created[0].id))
    await _delete(s, "dev")
    listed = await s.stub.ListEndpoints(transfer_pb2.ListEndpointsRequest())
    assert [e.name for e in listed.endpoints] == ["prod", "qa"]


async def test_delete_refused_unavailable_when_policy_service_cannot_be_asked(
    endpoints_only: Served, tmp_path: Path
) -> None:
    s = endpoints_only
    await _add(s, "qa", "http://127.0.0.1:5101")
    dead = aio.insecure_channel(f"127.0.0.1:{free_port()}")  # nothing listens there
    try:
        s.servicer.policy_refs = TransferServicer(
            s.servicer.endpoints, s.servicer.journal, s.servicer.worker, policy_channel=dead
        ).policy_refs
        with pytest.raises(aio.AioRpcError) as info:
            await _delete(s, "qa")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "nothing was deleted" in info.value.details()
        assert (await s.stub.GetEndpoint(transfer_pb2.GetEndpointRequest(name="qa"))).name == "qa"
    finally:
        await dead.close()


async def test_second_endpoint_for_one_registry_refused(endpoints_only: Served) -> None:
    s = endpoints_only
    await _add(s, "qa", "http://127.0.0.1:5000", aliases=["qa-registry:5000", "qa.internal"])
    await _add(s, "prod", "https://prod.example")
    for url, how in (
        ("http://127.0.0.1:5000", "url"),
        ("HTTP://127.0.0.1:5000/", "url"),
        ("https://127.0.0.1:5000", "url"),  # one port serves one registry
        ("http://qa-registry:5000", "alias qa-registry:5000"),
        ("http://qa.internal", "alias qa.internal"),
        ("http://localhost:5000", "url"),  # loopback names: one local registry
        ("http://[::1]:5000", "url"),
    ):
        with pytest.raises(aio.AioRpcError) as info:
            await _add(s, "again", url)
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS, url
        assert "'qa'" in info.value.details() and how in info.value.details()
        assert "aliases" in info.value.details()
    with pytest.raises(aio.AioRpcError) as info:
        await _add(s, "again", "https://prod.example:443")
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS and "'prod'" in (
        info.value.details()
    )
    # Other ports and hosts are other registries.
    await _add(s, "qa2", "http://127.0.0.1:5001")
    await _add(s, "prod-http", "http://prod.example")
    # Moving an endpoint onto another's registry is refused as well, and changes nothing.
    with pytest.raises(aio.AioRpcError) as info:
        await s.stub.UpdateEndpoint(
            transfer_pb2.UpdateEndpointRequest(
                endpoint=endpoint_msg("qa2", "http://qa-registry:5000"),
                update_mask=field_mask_pb2.FieldMask(paths=["url"]),
            )
        )
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    got = await s.stub.GetEndpoint(transfer_pb2.GetEndpointRequest(name="qa2"))
    assert got.url == "http://127.0.0.1:5001"
    # An alias that another endpoint already answers to (its URL or an alias) is refused too.
    for alias in ("127.0.0.1:5000", "qa-registry:5000", "QA.internal", "prod.example"):
        with pytest.raises(aio.AioRpcError) as info:
            await s.stub.UpdateEndpoint(
                transfer_pb2.UpdateEndpointRequest(
                    endpoint=endpoint_msg("qa2", aliases=[alias]),
                    update_mask=field_mask_pb2.FieldMask(paths=["aliases"]),
                )
            )
        assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS, alias
        assert "one host name places events at one endpoint" in info.value.details()
    ok = await s.stub.UpdateEndpoint(
        transfer_pb2.UpdateEndpointRequest(
            endpoint=endpoint_msg("qa2", aliases=["localhost:5001", "qa2.internal"]),
            update_mask=field_mask_pb2.FieldMask(paths=["aliases"]),
        )
    )
    assert list(ok.aliases) == ["localhost:5001", "qa2.internal"]


async def test_validate_only_checks_like_a_write_and_stores_nothing(
    endpoints_only: Served,
) -> None:
    s = endpoints_only
    await _add(s, "qa", "http://127.0.0.1:5000")

    async def check(ep: transfer_pb2.Endpoint) -> transfer_pb2.Endpoint:
        return await s.stub.CreateEndpoint(
            transfer_pb2.CreateEndpointRequest(endpoint=ep, validate_only=True)
        )

    seen = await check(endpoint_msg("prod", "https://prod.example", username="bot", secret="pw"))
    assert seen.name == "prod" and seen.has_secret and not seen.secret
    for bad, code, needle in (
        (endpoint_msg("prod", "https://prod.example", ca_pem="not a certificate"),
         grpc.StatusCode.INVALID_ARGUMENT, "ca_pem"),
        (endpoint_msg("Bad Name", "https://prod.example"), grpc.StatusCode.INVALID_ARGUMENT,
         "name"),
        (endpoint_msg("again", "http://localhost:5000"), grpc.StatusCode.ALREADY_EXISTS, "'qa'"),
        (endpoint_msg("qa", "http://127.0.0.1:5009"), grpc.StatusCode.ALREADY_EXISTS, "qa"),
    ):
        with pytest.raises(aio.AioRpcError) as info:
            await check(bad)
        assert info.value.code() == code, bad
        assert needle in info.value.details() + str(rpc_details(info.value)[1]), bad
    # An update checked the same way: refused or not, the stored endpoint is unchanged.
    with pytest.raises(aio.AioRpcError) as info:
        await s.stub.UpdateEndpoint(
            transfer_pb2.UpdateEndpointRequest(
                endpoint=endpoint_msg("qa", ca_pem="-----BEGIN CERTIFICATE-----\nxx"),
                update_mask=field_mask_pb2.FieldMask(paths=["ca_pem"]),
                validate_only=True,
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    moved = await s.stub.UpdateEndpoint(
        transfer_pb2.UpdateEndpointRequest(
            endpoint=endpoint_msg("qa", "http://127.0.0.1:5001"),
            update_mask=field_mask_pb2.FieldMask(paths=["url"]),
            validate_only=True,
        )
    )
    assert moved.url == "http://127.0.0.1:5001"
    listed = await s.stub.ListEndpoints(transfer_pb2.ListEndpointsRequest())
    assert [(e.name, e.url) for e in listed.endpoints] == [("qa", "http://127.0.0.1:5000")]
