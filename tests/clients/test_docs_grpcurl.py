"""docs/grpcurl.md: every shell block runs verbatim with .venv/bin/grpcurl on a live stack."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from mirror.client import connect

from registry_testkit.images import ImageBuilder, digest_of, push
from tests.clients.docs_blocks import blocks, json_stream, run_bash
from tests.clients.livestack import (
    ADMIN_TOKEN,
    ROOT,
    LiveStack,
    running,
    start_stack,
    wait_for,
)
from tests.e2e.signing import new_key, public_pem

pytestmark = pytest.mark.registry


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveStack]:
    yield from running(start_stack(tmp_path))


def test_grpcurl_doc_commands_run_verbatim(
    live: LiveStack, registry, images: ImageBuilder, tmp_path: Path
) -> None:
    image = images.image("1.0-stable", layers=[20_000])
    push(image, registry, "team/app")
    env = {
        "PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "MIRROR_ADDRESS": live.address,
        "MIRROR_TOKEN": ADMIN_TOKEN,
        "DEV_REGISTRY_URL": registry.url,
    }
    work = tmp_path / "work"
    work.mkdir()
    ci = new_key("ed25519")
    (work / "cosign.pub").write_text(public_pem(ci))
    outputs = []
    code = blocks("grpcurl.md", "sh")
    assert len(code) == 14
    for i, block in enumerate(code):
        res = run_bash(block, env, work)
        assert res.returncode == 0, f"block {i + 1} failed:\n{block}\n{res.stderr}"
        outputs.append(res.stdout)
    listing, describe_policy_service = outputs[0].split(), outputs[0]
    assert {"mirror.v1.PolicyService", "mirror.v1.TransferService", "mirror.v1.GatewayService",
            "grpc.health.v1.Health"} <= set(listing)
    assert "rpc CreatePolicy" in describe_policy_service
    assert json.loads(outputs[1])["status"] == "SERVING"
    created = json.loads(outputs[3])
    assert created["name"] == "promote-stable" and created["id"]
    assert created["source"] == {"endpoint": "dev", "repository": "team/app"}
    validation = json.loads(outputs[4])
    assert validation.get("valid", False) is False
    assert validation["errors"][0]["suggestion"] == "critical_vulns"
    evaluation = json.loads(outputs[5])
    results = [(r["policy_name"], r.get("matched", False)) for r in evaluation["results"]]
    assert results == [("promote-stable", True)]
    # The watch stream ends with the finished transfer.
    snapshots = json_stream(outputs[6])
    assert snapshots and snapshots[-1]["state"] == "STATE_DONE"
    assert digest_of(registry, "team/app-copy", "1.0-stable") == image.digest
    assert json.loads(outputs[7])["event_id"]
    json.loads(outputs[8])  # ListRuns printed one JSON object
    applied = json.loads(outputs[9])
    assert (applied["tags_evaluated"], applied["tags_matched"]) == (1, 1)
    assert "errors" not in applied  # grpcurl leaves out empty fields
    assert "errors" not in json.loads(outputs[10])
    vulndb, unplaced = json_stream(outputs[11])
    assert vulndb.get("loaded", False) is False and unplaced.get("events", []) == []
    polls, pruned = json_stream(outputs[12])
    assert polls.get("polls", []) == []  # a push-triggered policy never polls
    assert pruned.get("runs", []) == [] and pruned.get("tags_kept", 0) == 1
    key, keys = json_stream(outputs[13])
    assert (key["name"], key["algorithm"]) == ("ci", "ed25519") and len(key["fingerprint"]) == 64
    assert [k["name"] for k in keys["keys"]] == ["ci"]
    assert keys["keys"][0]["public_key_pem"] == public_pem(ci)
    with connect(live.address, token=ADMIN_TOKEN) as c:
        runs = wait_for("the notified push to make a run", lambda: [
            r for r in c.gateway.iter_runs() if r.policy_name == "promote-stable"
        ])
    assert runs[0].source.reference == "1.0-stable"


def test_documented_refusal_matches_the_server(live: LiveStack, tmp_path: Path) -> None:
    env = {"PATH": f"{ROOT / '.venv/bin'}:{os.environ['PATH']}", "HOME": str(tmp_path),
           "MIRROR_ADDRESS": live.address}
    res = run_bash('grpcurl -plaintext "$MIRROR_ADDRESS" mirror.v1.PolicyService/ListPolicies',
                env, tmp_path)
    assert res.returncode != 0
    documented = blocks("grpcurl.md", "text")[-1]
    for line in documented.strip().splitlines():
        assert line.strip() in res.stderr
