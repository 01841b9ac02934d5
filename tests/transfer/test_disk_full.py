"""A full data volume (issue 10, finding 6) gives "no space left on the data volume (<path>)":
in the job's message when the spool fills, as RESOURCE_EXHAUSTED when the database cannot
grow; never `INTERNAL: internal error`. The volume is a real 1 MiB tmpfs mounted by the test
(skipped where mounting is not allowed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc import aio
from mirror.v1 import common_pb2, transfer_pb2

from registry_testkit.images import ImageBuilder, push
from registry_testkit.registry import RegistryProcess
from tests.support.volumes import fill as _fill
from tests.transfer.transfer_support import ServeFn, endpoint_msg

T = transfer_pb2.Transfer


async def test_spool_full_gives_a_clear_job_message(
    serve: ServeFn,
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    tiny_volume: Callable[[str], Path],
) -> None:
    spool = tiny_volume("1m")
    img = images.image("1.0", layers=[3_000_000])  # larger than the spool volume
    push(img, registry, "team/app")
    s = await serve(spool_dir=spool, spool_threshold=0, max_attempts=2)
    for name, url in (("dev", registry.url), ("qa", registry2.url)):
        await s.stub.CreateEndpoint(
            transfer_pb2.CreateEndpointRequest(endpoint=endpoint_msg(name, url))
        )
    t = await s.stub.StartTransfer(
        transfer_pb2.StartTransferRequest(
            source=common_pb2.ImageLocation(endpoint="dev", repository="team/app", reference="1.0"),
            destination=transfer_pb2.TransferDestination(endpoint="qa", repository="qa/app"),
        )
    )
    deadline = time.monotonic() + 60
    while (job := await s.stub.GetTransfer(transfer_pb2.GetTransferRequest(id=t.id))).state in (
        T.STATE_WAITING, T.STATE_RUNNING,
    ):
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.1)
    assert job.state == T.STATE_ERROR
    assert f"no space left on the data volume ({spool})" in job.message, job.message
    assert not job.HasField("next_attempt_time")  # an operator must free space: not retried


async def test_database_full_is_resource_exhausted_with_the_path(
    serve: ServeFn, tiny_volume: Callable[[str], Path], tmp_path: Path
) -> None:
    data = tiny_volume("1m")
    s = await serve(data, spool_dir=tmp_path / "spool")
    await s.stub.CreateEndpoint(
        transfer_pb2.CreateEndpointRequest(endpoint=endpoint_msg("dev", "http://127.0.0.1:5000"))
    )
    _fill(data)
    with pytest.raises(aio.AioRpcError) as info:
        for i in range(200):  # the WAL may still have room for a few rows
            await s.stub.CreateEndpoint(
                transfer_pb2.CreateEndpointRequest(
                    endpoint=endpoint_msg(f"ep-{i}", f"http://127.0.0.1:{6000 + i}",
                                          ca_pem="", aliases=[f"alias-{i}-{'x' * 40}"])
                )
            )
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
    assert info.value.details() == f"no space left on the data volume ({data})"
    (data / "filler").unlink()
    # Space again: the service carries on.
    await s.stub.CreateEndpoint(
        transfer_pb2.CreateEndpointRequest(endpoint=endpoint_msg("qa", "http://127.0.0.1:7000"))
    )
