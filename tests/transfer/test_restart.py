"""`python -m transfer_service` SIGKILLed mid-copy and restarted on the same data folder: the job
resumes and completes, and no blob that had reached the destination is uploaded again."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from grpc import aio
from mirror.v1 import common_pb2, transfer_pb2, transfer_pb2_grpc

from registry_testkit.faultproxy import FaultProxy
from registry_testkit.images import ImageBuilder, digest_of, inspect_raw, push
from registry_testkit.registry import RegistryProcess
from stack.process import kill_process, stop_process

pytestmark = pytest.mark.registry

ROOT = Path(__file__).resolve().parents[2]
T = transfer_pb2.Transfer


class ServiceProcess:
    """One `python -m transfer_service` child on a free port."""

    def __init__(self, data: Path, log: Path) -> None:
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "transfer_service", "--grpc-listen", "127.0.0.1:0",
                 "--data", str(data), "--max-blobs", "1", "--log-level", "INFO"],
                cwd=ROOT, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                env={k: v for k, v in os.environ.items() if k != "MIRROR_SECRET_KEY"},
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        m = re.search(r"listening on port (\d+)", line)
        assert m, f"no port line: {line!r}; log: {log.read_text()[-2000:]}"
        self.port = int(m.group(1))
        self.channel = aio.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = transfer_pb2_grpc.TransferServiceStub(self.channel)

    async def kill(self) -> None:
        await self.channel.close()
        kill_process(self.proc)

    async def stop(self) -> None:
        await self.channel.close()
        stop_process(self.proc, 10)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Callable[[Path], ServiceProcess]]:
    started: list[ServiceProcess] = []

    def make(data: Path) -> ServiceProcess:
        s = ServiceProcess(data, tmp_path / f"service-{len(started)}.log")
        started.append(s)
        return s

    yield make
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(10)


def _puts_by_digest(entries: list[tuple[str, str, str]]) -> dict[str, int]:
    """Upload completions (PUT ...?digest=D) per digest D."""
    out: dict[str, int] = {}
    for method, path, query in entries:
        m = re.search(r"(?:^|&)digest=([^&]+)", query)
        if method == "PUT" and "/blobs/uploads/" in path and m:
            d = m.group(1).replace("%3A", ":")
            out[d] = out.get(d, 0) + 1
    return out


async def test_sigkill_mid_copy_then_resume_uploads_nothing_twice(
    services: Callable[[Path], ServiceProcess],
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    fault_proxy: Callable[[str], FaultProxy],
    tmp_path: Path,
) -> None:
    img = images.image("big", layers=[24 << 20, *([1 << 20] * 5)])
    push(img, registry, "team/app")
    blobs = [b.digest for b in img.blobs]
    assert len(blobs) == 7
    proxy = fault_proxy(registry2.url)
    # Throttle the destination: each blob upload's PATCH waits, so a copy takes seconds and the
    # kill lands between blobs, with some at the destination and some not.
    proxy.delay(r"/blobs/uploads/", 0.7, method="PATCH")

    data = tmp_path / "data"
    first = services(data)
    for name, url in (("dev", registry.url), ("qa", proxy.url)):
        await first.stub.CreateEndpoint(
            transfer_pb2.CreateEndpointRequest(endpoint=transfer_pb2.Endpoint(name=name, url=url))
        )
    t = await first.stub.StartTransfer(
        transfer_pb2.StartTransferRequest(
            source=common_pb2.ImageLocation(endpoint="dev", repository="team/app",
                                            reference="big"),
            destination=transfer_pb2.TransferDestination(endpoint="qa", repository="qa/app",
                                                         tag="big"),
            idempotency_key="restart-test",
        )
    )

    def landed() -> set[str]:
        return {d for d in blobs if registry2.blob_exists("qa/app", d)}

    deadline = time.monotonic() + 60
    while len(landed()) < 2:
        assert time.monotonic() < deadline, "the copy made no progress"
        await asyncio.sleep(0.02)
    await first.kill()
    await asyncio.sleep(0.5)  # let anything the proxy already forwarded settle
    before = landed()
    assert 0 < len(before) < len(blobs), f"kill did not land mid-copy: {len(before)} blobs"
    mark = len(proxy.log)
    assert not registry2.blob_exists("qa/app", img.digest)

    second = services(data)
    # The same idempotency key after the restart names the same job.
    again = await second.stub.StartTransfer(
        transfer_pb2.StartTransferRequest(
            source=common_pb2.ImageLocation(endpoint="dev", repository="team/app",
                                            reference="big"),
            destination=transfer_pb2.TransferDestination(endpoint="qa", repository="qa/app",
                                                         tag="big"),
            idempotency_key="restart-test",
        )
    )
    assert again.id == t.id

    async def final() -> transfer_pb2.Transfer:
        last = None
        async for snap in second.stub.WatchTransfer(transfer_pb2.WatchTransferRequest(id=t.id)):
            last = snap
        assert last is not None
        return last

    done = await asyncio.wait_for(final(), 120)
    await second.stop()
    assert done.state == T.STATE_DONE, done.message
    assert done.attempts == 2
    assert done.digest == img.digest == digest_of(registry2, "qa/app", "big")
    assert inspect_raw(registry2, "qa/app", "big") == inspect_raw(registry, "team/app", "big")

    after = proxy.log[mark:]
    puts_after = _puts_by_digest(after)
    # Blobs that had reached the destination were not uploaded again...
    assert not set(puts_after) & before, puts_after
    # ... and each missing blob was uploaded exactly once after the restart.
    assert puts_after == {d: 1 for d in blobs if d not in before}
    uploads_started = [e for e in after if e[0] == "POST" and "/blobs/uploads/" in e[1]]
    assert len(uploads_started) == len(blobs) - len(before)
    assert done.blobs_skipped == len(before)
    assert done.blobs_done == len(blobs) - len(before)
