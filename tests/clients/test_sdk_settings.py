"""The SDK's calls for issues 12 and 13 against a live stack: policy settings as keywords
(sync and asyncio), trusted keys, polls and prune; and rate-limit refusals (RESOURCE_EXHAUSTED
with RetryInfo) retried within `rate_limit_wait`, which `mirrorctl apply` uses, and raised at
once when the wait asked for is longer."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from mirror import aio, errors, policyfields
from mirror.client import connect

from registry_testkit.registry import RegistryProcess
from tests.clients.livestack import ADMIN_TOKEN, LiveStack, running, start_stack
from tests.e2e.signing import new_key, public_pem

pytestmark = pytest.mark.registry


def _stack(tmp: Path, rate: str) -> Iterator[LiveStack]:
    proc = start_stack(tmp)
    proc.env["MIRROR_RULE_CHECK_RATE"] = rate
    yield from running(proc)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveStack]:
    yield from _stack(tmp_path, "100/second")


def test_settings_keys_polls_and_prune_sync_and_asyncio(
    live: LiveStack, registry_factory: Callable[..., RegistryProcess],
) -> None:
    dev, qa = registry_factory(), registry_factory()
    with connect(live.address, token=ADMIN_TOKEN) as client:
        client.transfers.create_endpoint(name="dev", url=dev.url)
        client.transfers.create_endpoint(name="qa", url=qa.url)
        p = client.policies.create(
            name="pull", source_endpoint="dev", source_repository="up/app", rule="true",
            endpoint="qa", repository="mirror/app", enabled=False,
            trigger=policyfields.schedule(interval=dt.timedelta(seconds=30), jitter="5s"),
            platforms=["linux/amd64"], keep_newest=3, deletions="dry-run",
            copy_referrers=["signatures", "sboms"], signature_wait=600,
        )
        assert policyfields.trigger_text(p) == "every 30s, jitter 5s"
        assert (list(p.platforms), p.keep_newest, p.deletions, list(p.copy_referrers),
                p.signature_wait.seconds) == (["linux/amd64"], 3, 3, ["signatures", "sboms"],
                                              600)
        cron = client.policies.create(
            name="cron", source_endpoint="dev", source_repository="up/cron", rule="true",
            endpoint="qa", repository="mirror/cron", enabled=False,
            trigger={"schedule": {"cron": "*/5 * * * *"}},
        )
        assert policyfields.trigger_text(cron) == "cron */5 * * * *"
        with pytest.raises(ValueError, match="exactly one of interval"):
            client.policies.create(name="x", source_endpoint="dev", source_repository="a",
                                   rule="true", endpoint="qa", repository="b",
                                   trigger={"schedule": {}})
        with pytest.raises(errors.InvalidArgument) as bad:
            client.policies.create(name="x", source_endpoint="dev", source_repository="a",
                                   rule="true", endpoint="qa", repository="b",
                                   trigger={"schedule": {"interval": "10s", "jitter": "1m"}})
        assert any(v.field.endswith("jitter") for v in bad.value.field_violations)

        updated = client.policies.update(p.id, etag=p.etag, trigger="manual", platforms=[],
                                         deletions="propagate")
        assert policyfields.trigger_kind(updated) == "manual"
        assert (list(updated.platforms), updated.deletions, updated.keep_newest) == ([], 2, 3)

        key = client.policies.create_trusted_key(name="ci", public_key_pem=public_pem(
            new_key("ecdsa")))
        assert key.algorithm == "ecdsa-p256" and len(key.fingerprint) == 64
        assert client.policies.get_trusted_key("ci").fingerprint == key.fingerprint
        assert [k.name for k in client.policies.iter_trusted_keys()] == ["ci"]
        with pytest.raises(errors.AlreadyExists):
            client.policies.create_trusted_key(name="ci", public_key_pem=key.public_key_pem)
        client.policies.delete_trusted_key("ci")
        with pytest.raises(errors.NotFound):
            client.policies.get_trusted_key("ci")

        assert list(client.gateway.iter_polls(updated.id)) == []  # never scheduled to run
        pruned = client.gateway.prune_policy(updated.id, dry_run=True)
        assert (list(pruned.runs), pruned.tags_kept) == ([], 0)
        with pytest.raises(errors.MirrorError) as missing:
            client.gateway.prune_policy("no-such-policy")
        assert isinstance(missing.value, errors.NotFound | errors.InvalidArgument)

    async def main() -> None:
        async with aio.connect(live.address, token=ADMIN_TOKEN) as ac:
            k = await ac.policies.create_trusted_key(
                name="release", public_key_pem=public_pem(new_key("ed25519")))
            assert k.algorithm == "ed25519"
            assert [x.name async for x in ac.policies.iter_trusted_keys()] == ["release"]
            got = await ac.policies.get_trusted_key("release")
            assert got.fingerprint == k.fingerprint
            await ac.policies.delete_trusted_key("release")
            polls = await ac.gateway.list_polls(cron.id)
            assert list(polls.polls) == []
            assert [x async for x in ac.gateway.iter_polls(cron.id)] == []
            resp = await ac.gateway.prune_policy(cron.id, dry_run=True)
            assert resp.tags_kept == 0
            again = await ac.policies.update(cron.id, trigger="push", keep_newest=1)
            assert (policyfields.trigger_kind(again), again.keep_newest) == ("push", 1)

    asyncio.run(main())


def test_rate_limited_calls_wait_as_retry_info_asks(
    tmp_path: Path, registry_factory: Callable[..., RegistryProcess],
) -> None:
    dev, qa = registry_factory(), registry_factory()
    for ls in _stack(tmp_path, "2/second"):
        with connect(ls.address, token=ADMIN_TOKEN) as plain:
            # Control: a burst without waiting is refused, with a RetryInfo.
            with pytest.raises(errors.ResourceExhausted) as refused:
                for _ in range(6):
                    plain.policies.validate_rule('tag == "1"')
            assert refused.value.retry_delay is not None
            assert 0 < refused.value.retry_delay <= 1.0
        with connect(ls.address, token=ADMIN_TOKEN, rate_limit_wait=5.0) as patient:
            began = time.monotonic()
            for _ in range(6):
                assert patient.policies.validate_rule('tag == "1"').valid
            assert time.monotonic() - began < 15

        async def burst(address: str) -> None:
            async with aio.connect(address, token=ADMIN_TOKEN, rate_limit_wait=5.0) as ac:
                for _ in range(5):
                    assert (await ac.policies.validate_rule("true")).valid

        asyncio.run(burst(ls.address))

        # mirrorctl apply: the policies on endpoints the file creates are checked with
        # ValidateRule, one rule check each, faster than the limit allows.
        doc = {"endpoints": [{"name": "dev", "url": dev.url}, {"name": "qa", "url": qa.url}],
               "policies": [{
            "name": f"p{i}", "source": {"endpoint": "dev", "repository": f"team/{i}"},
            "rule": 'tag endswith "stable"', "enabled": False,
            "target": {"endpoint": "qa", "repository": f"mirror/{i}"}} for i in range(6)]}
        path = tmp_path / "mirror.yaml"
        path.write_text(yaml.safe_dump(doc))
        refusals = ls.log.count("RESOURCE_EXHAUSTED")
        applied = ls.ctl("apply", "-f", str(path))
        assert applied.code == 0, applied.stderr
        assert ls.log.count("RESOURCE_EXHAUSTED") > refusals  # it was refused, and waited
        assert sorted(p["name"] for p in ls.ctl("policy", "list", "-o", "json").json()) == [
            f"p{i}" for i in range(6)]


def test_a_wait_longer_than_allowed_is_raised_at_once(tmp_path: Path) -> None:
    for ls in _stack(tmp_path, "1/minute"):
        with connect(ls.address, token=ADMIN_TOKEN, rate_limit_wait=3.0) as client:
            assert client.policies.validate_rule("true").valid
            began = time.monotonic()
            with pytest.raises(errors.ResourceExhausted) as refused:
                client.policies.validate_rule("true")
            assert time.monotonic() - began < 2.0  # the minute asked for is not waited
            assert refused.value.retry_delay is not None and refused.value.retry_delay > 3.0
        began = time.monotonic()
        r = ls.ctl("policy", "validate", "true")
        assert r.code == 1 and "too many rule checks" in r.stderr
        assert time.monotonic() - began < 10
