"""Pull mirroring (issue 12): scheduled policies poll an upstream behind token auth that sends
no events, copy new and moved tags, and an unchanged poll costs only tag lists and HEADs."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.duration_pb2 import Duration
from mirror.v1 import common_pb2, gateway_pb2, policy_pb2, transfer_pb2

from registry_testkit.faultproxy import FaultProxy
from registry_testkit.images import ImageBuilder, push
from registry_testkit.registry import RegistryProcess
from registry_testkit.token_server import TokenServer, TokenUser
from stack.process import StackProcess
from tests.e2e.conftest import Clients, wait_for
from tests.e2e.helpers import skopeo_digest, tags_of
from tests.e2e.signing import ANNOTATION, new_key, public_pem, signature_image, verify
from tests.support.registry import RegistryFactory

pytestmark = pytest.mark.registry

Run = gateway_pb2.Run
WRITER = ("writer", "writer-secret-1")


@pytest.fixture
def upstream(
    registry_factory: RegistryFactory, tmp_path: Path
) -> Iterator[tuple[RegistryProcess, FaultProxy]]:
    """A registry behind token auth that lets anyone pull (Docker Hub's anonymous tokens),
    reached through a proxy that logs every request."""
    with TokenServer(
        tmp_path / "token",
        users={WRITER[0]: TokenUser(WRITER[1], frozenset({"pull", "push"}))},
        anonymous_actions=frozenset({"pull"}),
    ) as ts:
        reg = registry_factory(token_server=ts)
        proxy = FaultProxy(reg.url).start()
        try:
            yield reg, proxy
        finally:
            proxy.stop()


def pull_policy(
    clients: Clients, name: str, source: str, target: str, *, interval_s: float = 1.0,
    keep_newest: int = 0, rule: str = "true", copy_referrers: tuple[str, ...] = (),
) -> policy_pb2.Policy:
    trigger = policy_pb2.PolicyTrigger(
        schedule=policy_pb2.ScheduleTrigger(interval=Duration(seconds=int(interval_s)))
    )
    return clients.policy.CreatePolicy(
        policy_pb2.CreatePolicyRequest(
            policy=policy_pb2.Policy(
                name=name,
                source=policy_pb2.PolicySource(endpoint="hub", repository=source),
                rule=rule,
                target=common_pb2.Target(endpoint="local", repository=target),
                tag_template="%n",
                enabled=True,
                trigger=trigger,
                keep_newest=keep_newest,
                copy_referrers=copy_referrers,
            )
        ),
        timeout=60,
    )


def polls(clients: Clients, policy_id: str) -> list[gateway_pb2.Poll]:
    return list(
        clients.gateway.ListPolls(
            gateway_pb2.ListPollsRequest(policy_id=policy_id, page_size=100), timeout=10
        ).polls
    )


def add_endpoints(
    clients: Clients, proxy: FaultProxy, local: RegistryProcess | FaultProxy
) -> None:
    """`hub`: the upstream, anonymous (it hands out pull tokens to anyone, as Docker Hub
    does); `local`: the destination registry, or a proxy in front of it."""
    clients.transfer.CreateEndpoint(
        transfer_pb2.CreateEndpointRequest(
            endpoint=transfer_pb2.Endpoint(name="hub", url=proxy.url)
        ),
        timeout=30,
    )
    if isinstance(local, FaultProxy):
        clients.transfer.CreateEndpoint(
            transfer_pb2.CreateEndpointRequest(
                endpoint=transfer_pb2.Endpoint(name="local", url=local.url)
            ),
            timeout=30,
        )
    else:
        clients.add_endpoint("local", local)


def test_pull_mirror_copies_new_and_moved_tags_and_idle_polls_are_cheap(
    stack: StackProcess,
    clients: Clients,
    registry_factory: RegistryFactory,
    upstream: tuple[RegistryProcess, FaultProxy],
    tmp_path: Path,
) -> None:
    reg, proxy = upstream
    local = registry_factory()
    add_endpoints(clients, proxy, local)
    images = ImageBuilder(tmp_path / "img")
    for tag in ("1.0", "1.1"):
        push(images.image(tag), reg, "lib/app", user=WRITER[0], password=WRITER[1])
    pol = pull_policy(clients, "pull-app", "lib/app", "mirror/app")

    wait_for(lambda: tags_of(local, "mirror/app") == ["1.0", "1.1"], 60, "initial sync")
    for tag in ("1.0", "1.1"):
        assert skopeo_digest(local, "mirror/app", tag) == skopeo_digest(
            reg, "lib/app", tag, *WRITER
        )
    status = clients.gateway.GetPolicyStatus(
        gateway_pb2.GetPolicyStatusRequest(policy_id=pol.id), timeout=10
    )
    assert status.HasField("next_poll_time") and status.HasField("last_poll")

    # The tag moves upstream: the next poll copies it again and says from which digest.
    old = skopeo_digest(reg, "lib/app", "1.1", *WRITER)
    new = push(images.image("1.1-new", layers=(4321,)), reg, "lib/app", tag="1.1",
               user=WRITER[0], password=WRITER[1])
    wait_for(lambda: skopeo_digest(local, "mirror/app", "1.1") == new, 60, "moved tag copied")
    moved = [r for r in clients.runs(pol.id) if r.source_digest == new]
    assert moved and moved[0].previous_digest == old and "moved" in moved[0].cause
    assert moved[0].trigger == Run.TRIGGER_SCHEDULE and moved[0].poll_id

    # Idle polls: only tag lists and manifest HEADs reach the upstream.
    clients.wait_runs_final(pol.id, 3)
    mark = time.time()
    seen = len(proxy.log)  # the proxy logs every request: look only at those after this

    def idle_polls() -> list[gateway_pb2.Poll] | None:
        after = [p for p in polls(clients, pol.id)
                 if p.start_time.ToNanoseconds() / 1e9 > mark and p.HasField("end_time")]
        return after if len(after) >= 2 else None

    done = wait_for(idle_polls, 30, "two idle polls")
    assert all(p.tags_listed == 2 and p.tags_changed == 0 and p.tags_copied == 0 for p in done)
    log = list(proxy.log)[seen:]
    manifest_gets = [r for r in log if r[0] == "GET" and "/manifests/" in r[1]]
    blob_gets = [r for r in log if r[0] == "GET" and "/blobs/" in r[1]]
    assert manifest_gets == [] and blob_gets == [], log
    heads = [r for r in log if r[0] == "HEAD" and "/manifests/" in r[1]]
    assert len(heads) >= 4  # two tags, two polls
    assert len(clients.transfers()) == 3


def test_keep_newest_mirrors_only_the_newest_matching_tags(
    stack: StackProcess,
    clients: Clients,
    registry_factory: RegistryFactory,
    upstream: tuple[RegistryProcess, FaultProxy],
    tmp_path: Path,
) -> None:
    reg, proxy = upstream
    local = registry_factory()
    add_endpoints(clients, proxy, local)
    images = ImageBuilder(tmp_path / "img")
    for tag in ("1.9.0", "1.10.0", "v1.11.0-alpine", "2.0.0", "nightly"):
        push(images.image(tag), reg, "lib/tool", user=WRITER[0], password=WRITER[1])
    # 2.x is excluded by the rule; of the rest, the two newest versions are kept.
    pol = pull_policy(
        clients, "newest", "lib/tool", "mirror/tool", keep_newest=2,
        rule='not (tag startswith "2.")',
    )
    wait_for(lambda: polls(clients, pol.id) and polls(clients, pol.id)[0].HasField("end_time"),
             60, "the first poll")
    wait_for(lambda: len(tags_of(local, "mirror/tool")) == 2, 60, "two tags mirrored")
    assert tags_of(local, "mirror/tool") == ["1.10.0", "v1.11.0-alpine"]


def test_platform_filter_mirrors_only_the_asked_platform(
    stack: StackProcess,
    clients: Clients,
    registry_factory: RegistryFactory,
    upstream: tuple[RegistryProcess, FaultProxy],
    tmp_path: Path,
) -> None:
    reg, proxy = upstream
    local = registry_factory()
    add_endpoints(clients, proxy, local)
    index = ImageBuilder(tmp_path / "img").index("1.0", ("linux/amd64", "linux/arm64/v8"))
    push(index, reg, "lib/multi", user=WRITER[0], password=WRITER[1])
    pol = clients.policy.CreatePolicy(
        policy_pb2.CreatePolicyRequest(
            policy=policy_pb2.Policy(
                name="amd64-only",
                source=policy_pb2.PolicySource(endpoint="hub", repository="lib/multi"),
                rule="true",
                target=common_pb2.Target(endpoint="local", repository="mirror/multi"),
                tag_template="%n",
                enabled=True,
                trigger=policy_pb2.PolicyTrigger(
                    schedule=policy_pb2.ScheduleTrigger(interval=Duration(seconds=60))
                ),
                platforms=["linux/amd64"],
            )
        ),
        timeout=60,
    )
    wait_for(lambda: tags_of(local, "mirror/multi") == ["1.0"], 60, "the amd64 image")
    (run,) = clients.wait_runs_final(pol.id, 1)
    assert run.state == Run.STATE_SUCCEEDED, run.message
    entries = json.loads(index.manifest)["manifests"]
    amd64 = next(e["digest"] for e in entries if e["platform"]["architecture"] == "amd64")
    # One platform of an index: that platform's own manifest is what the tag names.
    assert skopeo_digest(local, "mirror/multi", "1.0") == amd64


def test_initial_sync_asks_the_destination_little_and_the_next_poll_waits_for_its_copies(
    stack: StackProcess,
    clients: Clients,
    registry_factory: RegistryFactory,
    upstream: tuple[RegistryProcess, FaultProxy],
    tmp_path: Path,
) -> None:
    reg, proxy = upstream
    local = registry_factory()
    dest = FaultProxy(local.url).start()
    try:
        add_endpoints(clients, proxy, dest)
        images = ImageBuilder(tmp_path / "img")
        tags = ["1.0", "1.1", "1.2", "1.3"]
        for tag in tags:
            push(images.image(tag), reg, "lib/app", user=WRITER[0], password=WRITER[1])
        # Every copy ends in a slow manifest push: the copies outlast the 1 s interval.
        dest.delay(r"/manifests/", 2.5, method="PUT")
        pol = pull_policy(clients, "pull-slow", "lib/app", "mirror/app", interval_s=1)
        # CreatePolicy's own check of the target (a test upload) is done before it returns,
        # and the policy polls only once it is stored.
        mark = len(dest.log)
        wait_for(lambda: tags_of(local, "mirror/app") == tags, 60, "initial sync")
        runs = clients.wait_runs_final(pol.id, len(tags))
        assert {r.state for r in runs} == {Run.STATE_SUCCEEDED}

        # Into an empty repository: one tag listing instead of a HEAD per new tag, no
        # manifest HEAD before a new image's push, no blob HEAD before its upload (the POST
        # that opens each upload session would have mounted a blob already there).
        log = list(dest.log)[mark:]
        assert [r for r in log if r[0] == "GET" and r[1].endswith("/tags/list")] == [
            ("GET", "/v2/mirror/app/tags/list", "")
        ]
        assert [r for r in log if r[0] == "HEAD"] == []
        posts = [r for r in log if r[0] == "POST"]
        assert posts and all(q.startswith("mount=") and "from=mirror/app" in q for _, _, q in posts)

        # The first poll ended as soon as its copies started; the next one waited for them.
        first, second = sorted(
            wait_for(lambda: ps if len(ps := polls(clients, pol.id)) >= 2 else None, 30,
                     "a second poll"),
            key=lambda p: p.start_time.ToNanoseconds(),
        )[:2]
        copies_ended = max(r.end_time.ToNanoseconds() for r in runs if r.poll_id == first.id)
        assert first.end_time.ToNanoseconds() < copies_ended - 2 * 10**9
        assert second.start_time.ToNanoseconds() >= copies_ended - 50 * 10**6
    finally:
        dest.stop()


def test_a_poll_carries_signatures_only_for_a_policy_that_copies_them(
    stack: StackProcess,
    clients: Clients,
    registry_factory: RegistryFactory,
    upstream: tuple[RegistryProcess, FaultProxy],
    tmp_path: Path,
) -> None:
    reg, proxy = upstream
    local = registry_factory()
    add_endpoints(clients, proxy, local)
    images = ImageBuilder(tmp_path / "img")
    key = new_key("ecdsa")
    first = push(images.image("1.0"), reg, "lib/app", user=WRITER[0], password=WRITER[1])
    sig = signature_image(tmp_path / "sig1", "lib/app", first, key)
    push(sig, reg, "lib/app", user=WRITER[0], password=WRITER[1])
    plain = pull_policy(clients, "plain", "lib/app", "mirror/plain")
    signed = pull_policy(
        clients, "signed", "lib/app", "mirror/signed", copy_referrers=("signatures",)
    )

    # The upstream's signature tag is not an image: only the policy that copies signatures
    # gets it, beside the image it signs.
    wait_for(lambda: tags_of(local, "mirror/signed") == ["1.0", sig.tag], 60, "signed sync")
    wait_for(lambda: tags_of(local, "mirror/plain") == ["1.0"], 60, "plain sync")
    assert skopeo_digest(local, "mirror/signed", sig.tag) == sig.digest

    # A signature that arrives after its image was mirrored: the next poll carries it.
    second = push(images.image("2.0"), reg, "lib/app", user=WRITER[0], password=WRITER[1])
    wait_for(lambda: "2.0" in tags_of(local, "mirror/signed"), 60, "2.0 mirrored")
    wait_for(lambda: "2.0" in tags_of(local, "mirror/plain"), 60, "2.0 mirrored plain")
    late = signature_image(tmp_path / "sig2", "lib/app", second, key)
    push(late, reg, "lib/app", user=WRITER[0], password=WRITER[1])
    wait_for(lambda: late.tag in tags_of(local, "mirror/signed"), 60, "late signature carried")
    # One carry, for the late one (the first signature came with its image's copy), though
    # both policies' polls found the new signature tag.
    carried = [r for r in clients.runs(signed.id) if r.trigger == Run.TRIGGER_LATE_METADATA]
    assert len(carried) == 1 and late.tag in carried[0].cause, carried

    # At the destination the copied signature is byte for byte the same and verifies.
    assert skopeo_digest(local, "mirror/signed", late.tag) == late.digest
    layer = json.loads(late.manifest)["layers"][0]
    url = f"{local.url}/v2/mirror/signed/blobs/{layer['digest']}"
    with urllib.request.urlopen(url, timeout=10, context=local.ssl_context()) as resp:
        payload = resp.read()
    assert verify(public_pem(key), payload, layer["annotations"][ANNOTATION])
    assert json.loads(payload)["critical"]["image"]["docker-manifest-digest"] == second

    # Two idle polls later the plain mirror still holds images only.
    done_before = len(polls(clients, plain.id))
    wait_for(lambda: len(polls(clients, plain.id)) >= done_before + 2, 30, "two more polls")
    assert tags_of(local, "mirror/plain") == ["1.0", "2.0"]
    assert all(r.source.reference in ("1.0", "2.0") for r in clients.runs(plain.id)
               if r.state == Run.STATE_SUCCEEDED)
