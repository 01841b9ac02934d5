"""docs/sdk.md: every Python block runs, in order, against a live mirror-stack."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from mirror.client import connect

from registry_testkit.images import ImageBuilder, digest_of, list_tags, push
from tests.clients.docs_blocks import blocks
from tests.clients.livestack import ADMIN_TOKEN, LiveStack, running, start_stack, wait_for

pytestmark = pytest.mark.registry

WEBHOOK_TOKEN = "docs-hook-" + "5b9e02c7"


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveStack]:
    yield from running(start_stack(tmp_path))


def test_sdk_doc_examples_run(
    live: LiveStack, registry, images: ImageBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = images.image("1.0", layers=[30_000])
    push(image, registry, "team/app")
    monkeypatch.setenv("MIRROR_ADDRESS", live.address)
    monkeypatch.setenv("MIRROR_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("DEV_REGISTRY_URL", registry.url)
    monkeypatch.setenv("DEV_WEBHOOK_TOKEN", WEBHOOK_TOKEN)
    monkeypatch.delenv("MIRROR_CA_FILE", raising=False)

    code = blocks("sdk.md", "python")
    assert len(code) >= 8
    namespace: dict[str, object] = {"__name__": "docs_sdk"}
    out = io.StringIO()
    for i, block in enumerate(code):
        with contextlib.redirect_stdout(out):
            try:
                exec(compile(block, f"docs/sdk.md block {i + 1}", "exec"), namespace)
            except Exception as exc:
                raise AssertionError(f"docs/sdk.md block {i + 1} failed: {exc!r}\n{block}") from exc
    printed = out.getvalue()
    # What the examples claim to show did happen.
    assert "policy.rule -> line 2, column 3:" in printed
    assert "NOT_FOUND" in printed
    assert "copy-app-all " in printed
    assert "Alpine" not in printed and "no vulnerability data 0 records" in printed
    assert "pull-app every 30s, jitter 5s" in printed
    assert "ci ecdsa-p256 " in printed and "refused: trusted key 'ci' is named by" in printed
    assert " to delete, " in printed
    assert digest_of(registry, "team/app-mirror", "1.0") == image.digest
    with connect(live.address, token=ADMIN_TOKEN) as c:
        names = {p.name for p in c.policies.iter()}
        assert names == {"copy-app", "copy-app-all", "copy-app-async", "pull-app"}
        pull = next(p for p in c.policies.iter() if p.name == "pull-app")
        assert (pull.trigger.WhichOneof("kind"), pull.keep_newest, pull.deletions) == (
            "manual", 0, 2)
        assert list(c.policies.iter_trusted_keys()) == []
        assert c.transfers.get_endpoint("dev").has_webhook_secret
        # team/* -> mirror/{path}: each repository to its own (team/app-copy may have come
        # too late for the apply).
        wait_for("the glob policy's copies", lambda: all(
            list_tags(registry, f"mirror/{name}") == ["1.0"] for name in ("app", "app-mirror")
        ))
        assert digest_of(registry, "mirror/app", "1.0") == image.digest
        # pull-app polled team/app (1.0 matches >=1.0 <2) until it was made manual.
        assert {r.policy_name for r in c.gateway.iter_runs()} <= set(names)
        assert {r.policy_name for r in c.gateway.iter_runs()} >= set(names) - {"pull-app"}
    assert digest_of(registry, "team/app-async", "1.0") == image.digest
    assert WEBHOOK_TOKEN not in printed and WEBHOOK_TOKEN not in live.log
