"""A transfer RUNNING when the stack is SIGKILLed is tracked to its end after the restart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from mirror.v1 import gateway_pb2, transfer_pb2

from registry_testkit.images import ImageBuilder, push
from stack.process import StackProcess
from tests.e2e.conftest import WEBHOOK_SECRET, Clients, notify_config, wait_for
from tests.e2e.helpers import skopeo_digest, tags_of
from tests.support.faultproxy import FaultProxy
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

Run = gateway_pb2.Run
Transfer = transfer_pb2.Transfer


def test_running_transfer_is_tracked_to_its_end_after_sigkill(
    registry_factory: RegistryFactory, fault_proxy: Callable[[str], FaultProxy],
    tmp_path: Path,
) -> None:
    stack = StackProcess(
        tmp_path / "data", webhook_secret=WEBHOOK_SECRET, extra_args=["--reconcile-interval", "0"]
    )
    stack.start()
    c = Clients(stack.grpc_address)
    try:
        dev = registry_factory(notifications=[notify_config(stack)])
        qa = registry_factory()
        # The destination's manifest PUT hangs once: the transfer is surely RUNNING at the kill.
        proxy = fault_proxy(qa.url)
        proxy.delay(r"/manifests/", 2.0, times=1, method="PUT")
        c.add_endpoint("dev", dev)
        c.transfer.CreateEndpoint(
            transfer_pb2.CreateEndpointRequest(
                endpoint=transfer_pb2.Endpoint(name="qa", url=proxy.url)
            ),
            timeout=30,
        )
        pol = c.add_policy("p", "dev/website", 'tag endswith "stable"', "qa", "qa/website")
        img = ImageBuilder(tmp_path / "img").image("14.0-stable", layers=[64 << 10, 32 << 10])
        push(img, dev, "dev/website")

        wait_for(lambda: proxy.requests("PUT", r"/manifests/"), 30, "the delayed manifest PUT")
        (run,) = c.runs(pol.id)
        assert run.state == Run.STATE_RUNNING and run.transfer_id
        tr = c.transfer.GetTransfer(transfer_pb2.GetTransferRequest(id=run.transfer_id), timeout=10)
        assert tr.state == Transfer.STATE_RUNNING
        c.close()
        stack.kill()
        assert tags_of(qa, "qa/website") == []  # the kill came before the tag was pushed

        stack.start()  # same data and ports
        c = Clients(stack.grpc_address)
        (done,) = c.wait_runs_final(pol.id, 1, timeout=60)
        assert done.id == run.id and done.transfer_id == run.transfer_id
        assert done.state == Run.STATE_SUCCEEDED, done.message
        assert done.message == "mirrored to qa/website:14.0-stable on endpoint qa"
        tr = c.transfer.GetTransfer(transfer_pb2.GetTransferRequest(id=run.transfer_id), timeout=10)
        assert tr.state == Transfer.STATE_DONE
        assert skopeo_digest(qa, "qa/website", "14.0-stable") == img.digest
        # One transfer only: the restart resumed the job, the gateway did not start another.
        assert len(c.transfers("qa/website")) == 1
        c.close()
    finally:
        stack.stop()
