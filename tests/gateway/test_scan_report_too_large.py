"""A scan report over the gateway's gRPC message limit (issue 10, finding 6): the run is
recorded at once with the reason, and nothing retries it (before, the event was retried for
13 minutes and no run was recorded). The policy reads licenses, which only the scan gives:
it is BLOCKED (its facts are missing), and its message says why they are.

The services run as their own processes, as in docker-compose.yml: transfer, policy, the
real scanner and the gateway. The scanner's operator raised its report limit
(--max-report-kib 16384) above the 4 MiB the gateway accepts per message, and an image with
48,000 dpkg packages makes a report of about 5 MB: the gateway's own channel refuses it
(RESOURCE_EXHAUSTED, "Received message larger than max"), which is not a failure a retry can
pass (servicekit.retry.message_too_large).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mirror.v1 import gateway_pb2

from registry_testkit.images import push
from registry_testkit.ports import free_port
from tests.e2e.conftest import WEBHOOK_SECRET, Clients, wait_for
from tests.e2e.helpers import healthz, tags_of
from tests.scanner import ocikit
from tests.scanner.test_bounds import dpkg_bomb
from tests.support.registry import RegistryFactory
from tests.support.services import running, split_commands

pytestmark = pytest.mark.registry

Run = gateway_pb2.Run
GRPC_LIMIT = 4 << 20  # what a grpc channel accepts per message by default
SCAN_RPC = re.compile(r"rpc /mirror\.v1\.ScanService/ScanImage (\w+)")


@pytest.fixture
def services(tmp_path: Path) -> Iterator[dict[str, str]]:
    addr = {n: f"127.0.0.1:{free_port()}"
            for n in ("policy", "transfer", "scanner", "gateway", "http")}
    cmds = split_commands(tmp_path, addr, scanner=["--max-report-kib", "16384"])
    env = {k: v for k, v in os.environ.items() if k != "MIRROR_SECRET_KEY"}
    env["MIRROR_WEBHOOK_SECRET"] = WEBHOOK_SECRET
    with running(cmds, tmp_path, env):
        yield addr


def test_a_scan_report_over_the_message_limit_is_recorded_and_not_retried(
    services: dict[str, str], registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    notify = {"name": "gw", "url": f"http://{services['http']}/events",
              "headers": {"Authorization": [f"Bearer {WEBHOOK_SECRET}"]}}
    dev = registry_factory(notifications=[notify])
    qa = registry_factory()
    transfer, policy, gateway = (Clients(services[n]) for n in ("transfer", "policy", "gateway"))
    scanner_log = tmp_path / "scanner.log"
    try:
        transfer.add_endpoint("dev", dev)
        transfer.add_endpoint("qa", qa)
        pol = policy.add_policy("no-gpl", "dev/app", 'license != "GPL-3.0-only"', "qa", "qa/app")
        gateway.wait_baseline(pol.id)
        push(ocikit.image(tmp_path, "big", [dpkg_bomb(48_000)]), dev, "dev/app")

        started = time.monotonic()
        (run,) = gateway.wait_runs_final(pol.id, 1, timeout=120)
        took = time.monotonic() - started
        assert run.state == Run.STATE_BLOCKED, run.message
        assert "the scan report is too large: RESOURCE_EXHAUSTED" in run.message, run.message
        sizes = re.search(r"larger than max \((\d+) vs\. (\d+)\)", run.message)
        assert sizes is not None, run.message
        assert int(sizes[1]) > GRPC_LIMIT == int(sizes[2])  # the real report, the real limit
        assert took < 60
        assert tags_of(qa, "qa/app") == []

        # The event is done, not pending a retry (a transient failure would leave it pending
        # with a later attempt); the scanner was asked once and answered (OK: it sent the
        # report, the gateway's channel refused to take it).
        health = wait_for(lambda: (h := healthz(f"http://{services['http']}")).get("events")
                          == {"done": 1} and h, 30, "the event done")
        assert health["inbox_depth"] == 0
        assert SCAN_RPC.findall(scanner_log.read_text()) == ["OK"]
        runs = gateway.runs(pol.id)
        assert [(r.id, r.state) for r in runs] == [(run.id, Run.STATE_BLOCKED)]
    finally:
        for c in (transfer, policy, gateway):
            c.close()
