"""A two-stage promotion pipeline dev -> qa -> prod, driven by registry events alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from mirror.v1 import gateway_pb2

from registry_testkit.images import ImageBuilder, push
from stack.process import StackProcess
from tests.e2e.conftest import QA_PASSWORD, QA_USER, Clients, notify_config, wait_for
from tests.e2e.helpers import skopeo_digest, tags_of
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

Run = gateway_pb2.Run


def test_dev_to_qa_to_prod(
    stack: StackProcess, clients: Clients, registry_factory: RegistryFactory, tmp_path: Path
) -> None:
    dev = registry_factory(notifications=[notify_config(stack)])
    # QA notifies the gateway too: what the first policy pushes there starts the second stage.
    qa = registry_factory(
        htpasswd_users={QA_USER: QA_PASSWORD}, notifications=[notify_config(stack)]
    )
    prod = registry_factory()
    clients.add_endpoint("dev", dev)
    clients.add_endpoint("qa", qa, QA_USER, QA_PASSWORD)
    clients.add_endpoint("prod", prod)
    to_qa = clients.add_policy("to-qa", "dev/website", 'tag endswith "stable"', "qa", "qa/website")
    to_prod = clients.add_policy(
        "to-prod", "qa/website", 'tag startswith "2."', "prod", "prod/website", template="%n-prod",
        source_endpoint="qa",
    )
    images = ImageBuilder(tmp_path / "img")
    push(images.image("2.0-stable"), dev, "dev/website")
    push(images.image("1.9-stable"), dev, "dev/website")

    wait_for(
        lambda: tags_of(prod, "prod/website") == ["2.0-stable-prod"], 60, "the prod tag"
    )
    src = skopeo_digest(dev, "dev/website", "2.0-stable")
    assert skopeo_digest(prod, "prod/website", "2.0-stable-prod") == src
    # 1.9-stable travels independently of 2.0-stable: wait for it rather than assume an order.
    wait_for(
        lambda: tags_of(qa, "qa/website", QA_USER, QA_PASSWORD) == ["1.9-stable", "2.0-stable"],
        60,
        "both stable tags in qa",
    )

    stage2 = clients.wait_runs_final(to_prod.id, 2)
    assert {r.source.endpoint for r in stage2} == {"qa"}
    states = {r.source.reference: r.state for r in stage2}
    assert states == {"2.0-stable": Run.STATE_SUCCEEDED, "1.9-stable": Run.STATE_NOT_MATCHED}
    stage1 = clients.wait_runs_final(to_qa.id, 2)
    assert all(r.state == Run.STATE_SUCCEEDED for r in stage1)
    assert {r.trigger for r in stage1 + stage2} == {Run.TRIGGER_EVENT}
    # One copy per hop, and the second hop knows where its image came from.
    assert len(clients.transfers()) == 3
    promoted = next(r for r in stage2 if r.state == Run.STATE_SUCCEEDED)
    assert [(p.endpoint, p.repository) for p in promoted.provenance] == [("dev", "dev/website")]
    assert promoted.hop == 1
