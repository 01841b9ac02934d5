"""One set of limits per registry and process: EndpointStore.client_for shares them across
jobs, polls and checks; an update replaces them, a delete drops them. Real registries, the
real service and worker, the fault proxy counting what reaches the source registry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from mirror.v1 import common_pb2, transfer_pb2

from registry_client.pool import POOL
from registry_testkit.faultproxy import FaultProxy
from registry_testkit.images import ImageBuilder, digest_of, push
from registry_testkit.registry import RegistryProcess
from tests.transfer.transfer_support import ServeFn, endpoint_msg
from transfer_service.endpoints import EndpointRecord, EndpointStore
from transfer_service.schema import open_database
from transfer_service.secrets import SecretBox

pytestmark = pytest.mark.registry

T = transfer_pb2.Transfer


async def test_clients_of_an_endpoint_share_state_until_it_changes(
    tmp_path: Path, registry: RegistryProcess
) -> None:
    db = open_database(tmp_path / "data")
    store = EndpointStore(db, SecretBox([Fernet.generate_key()]))
    try:
        store.create(EndpointRecord("dev", registry.url, max_concurrency=3))
        async with store.client_for("dev") as a:
            async with store.client_for("dev") as b:
                assert a.transport.shared is b.transport.shared
                await b.ping()
            await a.ping()  # the other caller's exit closed only its own session
            first = a.transport.shared
        async with store.client_for("dev") as c:
            assert c.transport.shared is first  # still the registry's, after every exit
        store.update("dev", {"max_concurrency": 5})
        async with store.client_for("dev") as d:
            assert d.transport.shared is not first
            assert d.transport.shared.sem._value == 5
            await d.ping()
        cfg = store.config_for("dev")
        assert POOL.peek(cfg) is not None
        # Another URL (here another name of the same loopback registry): the old state goes.
        other = registry.url.replace("127.0.0.1", "localhost")
        assert other != registry.url
        store.update("dev", {"url": other})
        assert POOL.peek(cfg) is None
        async with store.client_for("dev") as e:
            await e.ping()
        moved = store.config_for("dev")
        assert POOL.peek(moved) is e.transport.shared
        store.delete("dev")
        assert POOL.peek(moved) is None
    finally:
        db.close()


async def _wait_done(s: object, job_id: str, timeout: float = 120) -> transfer_pb2.Transfer:
    deadline = time.monotonic() + timeout
    while True:
        t = await s.stub.GetTransfer(transfer_pb2.GetTransferRequest(id=job_id))  # type: ignore[attr-defined]
        if t.state not in (T.STATE_WAITING, T.STATE_RUNNING):
            return t
        assert time.monotonic() < deadline, f"transfer {job_id} still {t.state}"
        await asyncio.sleep(0.05)


async def test_limits_hold_across_two_transfers_and_a_poll(
    serve: ServeFn,
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    fault_proxy: Callable[[str], FaultProxy],
) -> None:
    for name in ("a", "b"):
        img = images.image("1.0", layers=[40_000 + i for i in range(5)], name=name)
        push(img, registry, f"team/{name}")
    proxy = fault_proxy(registry.url)
    # Slow answers make requests overlap: without one limit per registry they would.
    proxy.delay(r"/v2/", 0.05)
    rps, slots = 10.0, 2
    s = await serve(max_concurrent_blobs=8)
    await s.stub.CreateEndpoint(
        transfer_pb2.CreateEndpointRequest(
            endpoint=endpoint_msg(
                "dev", proxy.url, max_concurrency=slots, requests_per_second=rps
            )
        )
    )
    await s.stub.CreateEndpoint(
        transfer_pb2.CreateEndpointRequest(endpoint=endpoint_msg("qa", registry2.url))
    )

    async def poll() -> None:
        # What a scheduled poll does through the gateway's resolver: list, HEAD each tag.
        for _ in range(3):
            async with s.servicer.endpoints.client_for("dev") as rc:
                for repo in ("team/a", "team/b"):
                    for tag in await rc.list_tags(repo):
                        assert await rc.head_manifest(repo, tag) is not None

    t0 = time.monotonic()
    jobs = [
        await s.stub.StartTransfer(
            transfer_pb2.StartTransferRequest(
                source=common_pb2.ImageLocation(
                    endpoint="dev", repository=f"team/{name}", reference="1.0"
                ),
                destination=transfer_pb2.TransferDestination(
                    endpoint="qa", repository=f"qa/{name}", tag="1.0"
                ),
            )
        )
        for name in ("a", "b")
    ]
    done, _ = await asyncio.gather(
        asyncio.gather(*(_wait_done(s, j.id) for j in jobs)), poll()
    )
    elapsed = time.monotonic() - t0
    assert [t.state for t in done] == [T.STATE_DONE, T.STATE_DONE]
    for name in ("a", "b"):
        assert digest_of(registry2, f"qa/{name}", "1.0") == digest_of(
            registry, f"team/{name}", "1.0"
        )
    sent = len(proxy.log)
    assert sent > 2 * rps  # enough requests that the rate, not the burst, decides
    assert 2 <= proxy.max_in_flight <= slots
    # A bucket of `rps` tokens refilled at `rps` per second: at most rps * (1 + elapsed).
    assert sent <= rps * (1 + elapsed) + 1, (sent, elapsed)
