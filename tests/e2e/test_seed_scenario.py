"""The seed's scenario: dev/website -> qa/website for tags ending in "stable"."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from mirror.v1 import gateway_pb2

from registry_testkit.images import ImageBuilder, push
from stack.process import StackProcess
from tests.e2e.conftest import QA_PASSWORD, QA_USER, Clients, notify_config
from tests.e2e.helpers import skopeo_digest, tags_of
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

Run = gateway_pb2.Run


def test_only_the_stable_tag_is_promoted_with_a_timestamp_tag(
    stack: StackProcess,
    clients: Clients,
    registry_factory: RegistryFactory,
    tmp_path: Path,
) -> None:
    dev = registry_factory(notifications=[notify_config(stack)])
    qa = registry_factory(htpasswd_users={QA_USER: QA_PASSWORD})
    clients.add_endpoint("dev", dev)
    clients.add_endpoint("qa", qa, QA_USER, QA_PASSWORD)
    pol = clients.add_policy(
        "website-to-qa",
        "dev/website",
        'tag endswith "stable"',
        "qa",
        "qa/website",
        template="%Y%m%d-%H%M%S",
    )
    images = ImageBuilder(tmp_path / "img")
    push(images.image("1.0-dev", labels={"build": "dev"}), dev, "dev/website")
    push(images.image("1.0-stable", labels={"build": "stable"}), dev, "dev/website")
    pushed_at = datetime.now(UTC)

    runs = clients.wait_runs_final(pol.id, 2)
    by_tag = {r.source.reference: r for r in runs}
    assert set(by_tag) == {"1.0-dev", "1.0-stable"}
    assert by_tag["1.0-dev"].state == Run.STATE_NOT_MATCHED
    assert 'tag endswith "stable"' in by_tag["1.0-dev"].message
    ok = by_tag["1.0-stable"]
    assert ok.state == Run.STATE_SUCCEEDED, ok.message

    qa_tags = tags_of(qa, "qa/website", QA_USER, QA_PASSWORD)
    assert qa_tags == [ok.destination_tag]
    promoted = datetime.strptime(qa_tags[0], "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
    assert abs((promoted - pushed_at).total_seconds()) < 60
    src = skopeo_digest(dev, "dev/website", "1.0-stable")
    assert skopeo_digest(qa, "qa/website", qa_tags[0], QA_USER, QA_PASSWORD) == src
    assert ok.source_digest == src

    status = clients.gateway.GetPolicyStatus(
        gateway_pb2.GetPolicyStatusRequest(policy_id=pol.id), timeout=10
    )
    assert (status.runs_total, status.runs_succeeded, status.runs_failed) == (2, 1, 0)
    assert status.HasField("last_success_time")
    assert len(clients.transfers("qa/website")) == 1
