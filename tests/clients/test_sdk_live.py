"""The SDK against a live mirror-stack: typed errors with decoded details, paging, asyncio."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from mirror import aio, errors
from mirror.client import PolicyApplied, connect
from mirror.v1 import policy_pb2

from registry_testkit.images import ImageBuilder, push
from tests.clients.livestack import ADMIN_TOKEN, LiveStack, running, start_stack

pytestmark = pytest.mark.registry


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveStack]:
    yield from running(start_stack(tmp_path))


def test_errors_carry_code_message_and_details(live: LiveStack, registry) -> None:
    with connect(live.address, token=ADMIN_TOKEN) as c:
        c.transfers.create_endpoint(name="dev", url=registry.url)
        with pytest.raises(errors.InvalidArgument) as bad:
            c.policies.create(name="p", source_endpoint="dev", source_repository="team/app",
                              endpoint="dev", repository="team/x", rule="tag ==\n")
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        rule_violations = [v for v in bad.value.field_violations if v.field == "policy.rule"]
        assert rule_violations and rule_violations[0].description.startswith("line 1, column")

        p = c.policies.create(name="p", source_endpoint="dev", source_repository="team/app",
                              endpoint="dev", repository="team/x", rule='tag == "1"')
        with pytest.raises(errors.AlreadyExists):
            c.policies.create(name="p", source_endpoint="dev", source_repository="team/app",
                              endpoint="dev", repository="team/x", rule='tag == "1"')
        c.policies.update(p.id, description="first", etag=p.etag)
        with pytest.raises(errors.Aborted) as stale:
            c.policies.update(p.id, description="second", etag=p.etag)
        assert stale.value.reason == "ETAG_MISMATCH"
        with pytest.raises(errors.NotFound) as missing:
            c.transfers.get("no-such-transfer")
        assert missing.value.error_info is not None
        assert missing.value.error_info.domain == "image-mirror.dev"


def test_iter_follows_page_tokens(live: LiveStack, registry) -> None:
    with connect(live.address, token=ADMIN_TOKEN) as c:
        c.transfers.create_endpoint(name="dev", url=registry.url)
        for i in range(5):
            c.policies.create(name=f"p{i}", source_endpoint="dev", source_repository=f"team/app{i}",
                              endpoint="dev", repository=f"team/copy{i}", rule="true")
        first = c.policies.list(page_size=2)
        assert len(first.policies) == 2 and first.next_page_token
        names = [p.name for p in c.policies.iter(page_size=2)]
        assert sorted(names) == [f"p{i}" for i in range(5)]
        assert len(set(names)) == 5


async def test_asyncio_client_watches_a_transfer(
    live: LiveStack, registry, images: ImageBuilder
) -> None:
    image = images.image("1.0", layers=[10_000])
    push(image, registry, "team/app")
    async with aio.connect(live.address, token=ADMIN_TOKEN) as c:
        await c.transfers.create_endpoint(name="dev", url=registry.url)
        t = await c.transfers.start(
            source_endpoint="dev", source_repository="team/app", source_reference="1.0",
            destination_endpoint="dev", destination_repository="team/app2",
        )
        states = [s.state async for s in c.transfers.watch(t.id)]
        assert states[-1] == t.STATE_DONE
        done = await c.transfers.get(t.id)
        assert done.digest == image.digest
        with pytest.raises(errors.NotFound):
            async for _ in c.transfers.watch("no-such-transfer"):
                pass


def test_save_and_apply_sync(live: LiveStack, registry, images: ImageBuilder) -> None:
    image = images.image("1.0", layers=[10_000])
    push(image, registry, "team/app")
    with connect(live.address, token=ADMIN_TOKEN) as c:
        c.transfers.create_endpoint(name="dev", url=registry.url,
                                    webhook_secret="sdk-hook-" + "4d2c9e71a0b3")
        assert c.transfers.get_endpoint("dev").has_webhook_secret
        with pytest.raises(ValueError, match="source_endpoint= is required"):
            c.policies.create(name="p", source_repository="team/app", rule="true",
                              endpoint="dev", repository="team/copy")
        with pytest.raises(ValueError, match="exclude each other"):
            c.policies.create(name="p", source_endpoint="dev", source_repository="team/app",
                              rule="true", endpoint="dev", repository="team/copy",
                              validate_only=True, apply=True)
        saved = c.policies.create(
            name="p", source_endpoint="dev", source_repository="team/app", rule="true",
            endpoint="dev", repository="team/copy", overwrite="never", apply=True,
        )
        assert isinstance(saved, PolicyApplied)
        assert saved.policy.source.endpoint == "dev"
        assert saved.policy.overwrite == policy_pb2.OVERWRITE_NEVER
        assert (saved.applied.tags_evaluated, saved.applied.tags_matched) == (1, 1)
        assert list(saved.applied.errors) == []
        # Save alone returns the policy and copies nothing of what is already there.
        plain = c.policies.create(name="q", source_endpoint="dev", source_repository="team/app",
                                  rule="true", endpoint="dev", repository="team/other")
        assert isinstance(plain, policy_pb2.Policy)
        assert [p.name for p in c.policies.iter(source_endpoint="dev")] == ["p", "q"]
        assert [p.name for p in c.policies.iter(endpoint="elsewhere")] == []
        updated = c.policies.update(plain.id, overwrite="never", allow_incomplete_facts=True,
                                    etag=plain.etag)
        assert updated.overwrite == policy_pb2.OVERWRITE_NEVER and updated.allow_incomplete_facts
        # By name: the policy as it is now, the endpoint (whose name is its key).
        assert c.policies.get_by_name("q") == updated == c.policies.get(plain.id)
        assert c.policies.get_by_name("p").id == saved.policy.id
        with pytest.raises(errors.NotFound):
            c.policies.get_by_name("no-such-policy")
        dev = c.transfers.get_endpoint("dev")
        assert (dev.name, dev.url) == ("dev", registry.url)
        with pytest.raises(errors.NotFound):
            c.transfers.get_endpoint("no-such-endpoint")
        status = c.scanner.vulndb_status()
        assert status.loaded is False and status.records == 0
        assert list(c.gateway.list_unplaced_events().events) == []
        req = c.policies.get_fact_requirements("team/app", endpoint="dev")
        assert req is not None


async def test_save_and_apply_asyncio(live: LiveStack, registry, images: ImageBuilder) -> None:
    image = images.image("2.0", layers=[10_000])
    push(image, registry, "team/app")
    async with aio.connect(live.address, token=ADMIN_TOKEN) as c:
        await c.transfers.create_endpoint(name="dev", url=registry.url)
        saved = await c.policies.create(
            name="p", source_endpoint="dev", source_repository="team/app", rule="true",
            endpoint="dev", repository="team/copy", apply=True,
        )
        assert saved.policy.name == "p" and saved.applied.tags_matched == 1
        plain = await c.policies.create(
            name="q", source_endpoint="dev", source_repository="team/app", rule="true",
            endpoint="dev", repository="team/other",
        )
        assert plain.name == "q"
        assert await c.policies.get_by_name("q") == plain == await c.policies.get(plain.id)
        assert (await c.policies.get_by_name("p")).id == saved.policy.id
        with pytest.raises(errors.NotFound):
            await c.policies.get_by_name("no-such-policy")
        dev = await c.transfers.get_endpoint("dev")
        assert (dev.name, dev.url) == ("dev", registry.url)
        with pytest.raises(errors.NotFound):
            await c.transfers.get_endpoint("no-such-endpoint")
        assert (await c.scanner.vulndb_status()).loaded is False
        assert list((await c.gateway.list_unplaced_events()).events) == []
        with pytest.raises(errors.NotFound):
            await c.gateway.apply_policy("no-such-policy")
