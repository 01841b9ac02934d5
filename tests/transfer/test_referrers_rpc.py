"""Referrers over gRPC (issue 13): options.copy_referrers, Transfer.referrers, kept across a
restart; and a transfer whose manifest commit answer is lost still ends DONE."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc import aio
from mirror.v1 import common_pb2, transfer_pb2

from registry_testkit.faultproxy import FaultProxy
from registry_testkit.images import ImageBuilder, inspect_raw, push
from registry_testkit.registry import RegistryProcess
from tests.e2e.signing import new_key, signature_image
from tests.engine import referrer_artifacts as art
from tests.transfer.test_transfers_rpc import add_endpoint, watch_all
from tests.transfer.transfer_support import ServeFn, rpc_details, stop_served

pytestmark = pytest.mark.registry

T = transfer_pb2.Transfer


def _start(
    kinds: list[str], tag: str = "", dst_repo: str = "qa/app"
) -> transfer_pb2.StartTransferRequest:
    return transfer_pb2.StartTransferRequest(
        source=common_pb2.ImageLocation(endpoint="dev", repository="dev/app", reference="1.0"),
        destination=transfer_pb2.TransferDestination(endpoint="qa", repository=dst_repo, tag=tag),
        options=transfer_pb2.TransferOptions(copy_referrers=kinds),
    )


async def test_copy_referrers_lists_what_was_copied_and_keeps_it_across_a_restart(
    serve: ServeFn,
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    tmp_path: Path,
) -> None:
    img = images.image("1.0", layers=[2000])
    push(img, registry, "dev/app")
    sig = signature_image(tmp_path, "dev/app", img.digest, new_key())
    push(sig, registry, "dev/app")
    sbom = art.push_sbom(registry, "dev/app", img.digest, len(img.manifest), tmp_path / "sbom")
    s = await serve()
    await add_endpoint(s, "dev", registry.url)
    await add_endpoint(s, "qa", registry2.url)

    t = await s.stub.StartTransfer(_start(["signatures", "sboms", "signatures"]))
    assert list(t.options.copy_referrers) == ["signatures", "sboms"]
    final = (await watch_all(s, t.id))[-1]
    assert final.state == T.STATE_DONE, final.message
    got = {(r.kind, r.digest, r.tag) for r in final.referrers}
    assert got == {("signature", sig.digest, sig.tag), ("sbom", sbom.digest, "")}
    assert "copied 2 referrer(s)" in final.message
    # The signature signs the digest; the destination repository differs: the message says so.
    assert img.digest in final.message and "dev/app" in final.message
    assert art.manifest(registry2, "qa/app", sig.tag)[1] == sig.manifest

    # A plain transfer copies none and says nothing about referrers.
    plain = await s.stub.StartTransfer(_start([], dst_repo="qa/plain"))
    plain_final = (await watch_all(s, plain.id))[-1]
    assert plain_final.state == T.STATE_DONE and not plain_final.referrers
    assert plain_final.message == "" and art.tags(registry2, "qa/plain") == ["1.0"]

    await stop_served(s)
    s2 = await serve(s.data)
    again = await s2.stub.GetTransfer(transfer_pb2.GetTransferRequest(id=t.id))
    assert {(r.kind, r.digest, r.tag) for r in again.referrers} == got
    assert list(again.options.copy_referrers) == ["signatures", "sboms"]


async def test_unknown_referrer_kind_is_invalid_argument(
    serve: ServeFn, registry: RegistryProcess, registry2: RegistryProcess
) -> None:
    s = await serve()
    await add_endpoint(s, "dev", registry.url)
    await add_endpoint(s, "qa", registry2.url)
    with pytest.raises(aio.AioRpcError) as info:
        await s.stub.StartTransfer(_start(["signatures", "provenance"]))
    code, fields, _ = rpc_details(info.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in fields] == ["options.copy_referrers[1]"]
    assert "'provenance'" in fields[0][1]


async def test_lost_answer_to_the_manifest_commit_ends_done_in_one_attempt(
    serve: ServeFn,
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    fault_proxy,
) -> None:
    img = images.image("1.0", layers=[3000])
    push(img, registry, "dev/app")
    proxy: FaultProxy = fault_proxy(registry2.url)
    # The registry stores the manifest; the connection breaks before its answer arrives.
    rule = proxy.drop_mid_body(r"/manifests/1\.0$", times=None, method="PUT")
    s = await serve()
    await add_endpoint(s, "dev", registry.url)
    await add_endpoint(s, "qa", proxy.url)
    t = await s.stub.StartTransfer(_start([]))
    final = (await watch_all(s, t.id))[-1]
    assert final.state == T.STATE_DONE, final.message
    assert final.attempts == 1 and final.digest == img.digest
    assert rule.fired >= 1  # the answer really was lost
    assert proxy.requests("HEAD", r"/manifests/1\.0$")  # settled by asking the registry
    assert inspect_raw(registry2, "qa/app", "1.0") == img.manifest
