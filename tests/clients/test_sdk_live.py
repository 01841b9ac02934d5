"""The SDK against a live mirror-stack: typed errors with decoded details, paging, asyncio."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from mirror import aio, errors
from mirror.client import connect

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
