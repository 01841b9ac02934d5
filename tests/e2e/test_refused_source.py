"""A source that refuses for good (issue 10, "nothing retries silently forever"): an endpoint
whose stored password the registry rejects. Its push event fails at once, every policy of
the source gets a FAILED run naming the refusal, and the event is not retried; before, any
error but "not found" was taken for a passing one and retried for minutes with no run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mirror.v1 import gateway_pb2

from registry_testkit.images import ImageBuilder, push
from stack.process import StackProcess
from tests.e2e.conftest import QA_PASSWORD, QA_USER, Clients, notify_config, wait_for
from tests.e2e.helpers import healthz, tags_of
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

Run = gateway_pb2.Run


def test_a_source_that_refuses_our_credentials_fails_the_run_at_once(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev = registry_factory(
        htpasswd_users={QA_USER: QA_PASSWORD}, notifications=[notify_config(stack)]
    )
    qa = registry_factory()
    clients.add_endpoint("dev", dev, QA_USER, "not-the-password")
    clients.add_endpoint("qa", qa)
    pol = clients.add_policy("p", "dev/website", "true", "qa", "qa/website")
    started = time.monotonic()
    push(ImageBuilder(tmp_path / "img").image("1.0"), dev, "dev/website",
         user=QA_USER, password=QA_PASSWORD)

    (run,) = clients.wait_runs_final(pol.id, 1, timeout=30)
    took = time.monotonic() - started
    assert run.state == Run.STATE_FAILED, run
    assert run.message.startswith("not retried: cannot read"), run.message
    assert "401" in run.message or "unauthorized" in run.message.lower(), run.message
    assert QA_PASSWORD not in run.message and "not-the-password" not in run.message
    assert took < 20, f"{took:.1f} s: retried before it was recorded"
    # The event is done with (failed), not waiting for another try.
    wait_for(lambda: healthz(stack.http_base)["inbox_depth"] == 0, 10, "the inbox drained")
    assert healthz(stack.http_base)["events"].get("failed", 0) >= 1
    assert tags_of(qa, "qa/website") == []
    assert len(clients.runs(pol.id)) == 1
