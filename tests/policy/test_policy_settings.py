"""Trigger and copy settings of a policy (issues 12, 13) over a real grpc.aio server: stored,
returned, validated on save and validate_only, updated by mask, kept over a restart and a
schema migration, and carried in Evaluate's PolicyResult."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from mirror.v1 import common_pb2, policy_pb2

from policy_service.store import MIGRATIONS, PolicyStore
from servicekit.db import Database
from tests.policy.policy_servicer_support import (  # noqa: F401  (fixtures)
    PolicyEnv,
    env,
    field_violations,
    policy,
    serving,
    transfer_double,
)

D = duration_pb2.Duration


def schedule(**kw: object) -> policy_pb2.PolicyTrigger:
    return policy_pb2.PolicyTrigger(schedule=policy_pb2.ScheduleTrigger(**kw))  # type: ignore[arg-type]


FULL = dict(
    trigger=schedule(interval=D(seconds=30), jitter=D(seconds=5)),
    platforms=["linux/amd64", "linux/arm64/v8"],
    keep_newest=3,
    deletions=policy_pb2.DELETION_MODE_PROPAGATE,
    copy_referrers=["signatures", "sboms"],
    signature_wait=D(seconds=600),
)


def _settings(p: policy_pb2.Policy) -> dict[str, object]:
    return dict(
        trigger=p.trigger, platforms=list(p.platforms), keep_newest=p.keep_newest,
        deletions=p.deletions, copy_referrers=list(p.copy_referrers),
        signature_wait=p.signature_wait,
    )


async def _refused(env: PolicyEnv, **kw: object) -> dict[str, str]:  # noqa: F811
    """The field violations of a refused create; validate_only is refused the same way."""
    for validate_only in (True, False):
        with pytest.raises(grpc.RpcError) as info:
            await env.stub.CreatePolicy(
                policy_pb2.CreatePolicyRequest(policy=policy(**kw), validate_only=validate_only)
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = await env.stub.ListPolicies(policy_pb2.ListPoliciesRequest())
    assert not listed.policies
    return field_violations(info.value)


async def test_every_setting_is_stored_and_returned(env: PolicyEnv) -> None:  # noqa: F811
    created = await env.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy(**FULL)))
    assert _settings(created) == FULL
    got = await env.stub.GetPolicy(policy_pb2.GetPolicyRequest(id=created.id))
    assert got == created
    [listed] = (await env.stub.ListPolicies(policy_pb2.ListPoliciesRequest())).policies
    assert _settings(listed) == FULL
    # Unset: push (no trigger), every platform, every tag, no deletions, no referrers.
    plain = await env.stub.CreatePolicy(
        policy_pb2.CreatePolicyRequest(policy=policy(name="plain", target=common_pb2.Target(
            endpoint="qa", repository="qa/plain")))
    )
    assert not plain.HasField("trigger") and not plain.HasField("signature_wait")
    assert (list(plain.platforms), plain.keep_newest, plain.deletions,
            list(plain.copy_referrers)) == ([], 0, 0, [])


async def test_cron_and_manual_triggers_round_trip(env: PolicyEnv) -> None:  # noqa: F811
    cron = await env.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy(
        trigger=schedule(cron="*/5 * * * *", jitter=D(seconds=60)))))
    assert cron.trigger == schedule(cron="*/5 * * * *", jitter=D(seconds=60))
    hourly = await env.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy(
        name="hourly", target=common_pb2.Target(endpoint="qa", repository="qa/h"),
        trigger=schedule(cron="@hourly", jitter=D(seconds=3599)))))
    assert hourly.trigger.schedule.cron == "@hourly"
    manual = await env.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy(
        name="manual", target=common_pb2.Target(endpoint="qa", repository="qa/m"),
        trigger=policy_pb2.PolicyTrigger(manual=policy_pb2.ManualTrigger()))))
    assert manual.trigger.WhichOneof("kind") == "manual"


@pytest.mark.parametrize(("settings", "field", "words"), [
    (dict(trigger=schedule()), "policy.trigger.schedule", "set exactly one of interval"),
    (dict(trigger=schedule(interval=D(seconds=60), cron="* * * * *")),
     "policy.trigger.schedule", "not both"),
    (dict(trigger=schedule(interval=D(nanos=500_000_000))),
     "policy.trigger.schedule.interval", "at least 1s"),
    (dict(trigger=schedule(cron="every five minutes")),
     "policy.trigger.schedule.cron", "not a valid cron expression"),
    (dict(trigger=schedule(cron="61 * * * *")),
     "policy.trigger.schedule.cron", "not a valid cron expression"),
    (dict(trigger=schedule(cron="* * * * * *")),
     "policy.trigger.schedule.cron", "five fields"),
    (dict(trigger=schedule(cron="0 0 31 2 *")), "policy.trigger.schedule.cron", "never fires"),
    (dict(trigger=schedule(interval=D(seconds=30), jitter=D(seconds=30))),
     "policy.trigger.schedule.jitter", "shorter than the interval (30s)"),
    (dict(trigger=schedule(interval=D(seconds=30), jitter=D(seconds=-1))),
     "policy.trigger.schedule.jitter", "negative"),
    (dict(trigger=schedule(cron="*/5 * * * *", jitter=D(seconds=300))),
     "policy.trigger.schedule.jitter", "shortest gap of the cron expression (300s)"),
    (dict(platforms=["linux"]), "policy.platforms[0]", "os/arch[/variant]"),
    (dict(platforms=["linux/amd64", "Linux/ARM64"]), "policy.platforms[1]", "os/arch"),
    (dict(platforms=["linux/arm/v7/extra"]), "policy.platforms[0]", "os/arch"),
    (dict(platforms=["linux/amd64", "linux/amd64"]), "policy.platforms[1]", "twice"),
    (dict(keep_newest=-1), "policy.keep_newest", "negative"),
    (dict(deletions=9), "policy.deletions", "unknown value 9"),
    (dict(copy_referrers=["signatures", "provenance"]), "policy.copy_referrers[1]",
     "'provenance'"),
    (dict(signature_wait=D(seconds=-1)), "policy.signature_wait", "negative"),
    (dict(signature_wait=D(seconds=24 * 3600 + 1)), "policy.signature_wait", "at most 24h"),
])
async def test_bad_settings_are_refused_naming_the_field(
    env: PolicyEnv, settings: dict[str, object], field: str, words: str  # noqa: F811
) -> None:
    violations = await _refused(env, **settings)
    assert field in violations, violations
    assert words in violations[field]


async def test_limits_are_accepted(env: PolicyEnv) -> None:  # noqa: F811
    p = await env.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy(
        trigger=schedule(interval=D(seconds=1), jitter=D(nanos=999_000_000)),
        signature_wait=D(seconds=24 * 3600), copy_referrers=["all"],
        platforms=["windows/amd64", "linux/arm/v7"])))
    assert p.signature_wait.seconds == 24 * 3600
    assert p.trigger.schedule.jitter.nanos == 999_000_000


async def test_update_by_mask_changes_only_the_named_setting(env: PolicyEnv) -> None:  # noqa: F811
    created = await env.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy(**FULL)))
    updated = await env.stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
        policy=policy_pb2.Policy(id=created.id, deletions=policy_pb2.DELETION_MODE_DRY_RUN,
                                 keep_newest=99),
        update_mask=field_mask_pb2.FieldMask(paths=["deletions"]),
    ))
    assert _settings(updated) == {**FULL, "deletions": policy_pb2.DELETION_MODE_DRY_RUN}
    pushed = await env.stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
        policy=policy_pb2.Policy(id=created.id, trigger=policy_pb2.PolicyTrigger(
            push=policy_pb2.PushTrigger())),
        update_mask=field_mask_pb2.FieldMask(paths=["trigger", "copy_referrers"]),
    ))
    assert pushed.trigger.WhichOneof("kind") == "push" and list(pushed.copy_referrers) == []
    assert pushed.keep_newest == 3
    with pytest.raises(grpc.RpcError) as info:
        await env.stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(id=created.id, copy_referrers=["everything"]),
            update_mask=field_mask_pb2.FieldMask(paths=["copy_referrers"]),
        ))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'everything'" in field_violations(info.value)["policy.copy_referrers[0]"]
    got = await env.stub.GetPolicy(policy_pb2.GetPolicyRequest(id=created.id))
    assert got == pushed


async def test_evaluate_carries_platforms_referrers_and_trigger(env: PolicyEnv) -> None:  # noqa: F811
    await env.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy(
        rule="true", **FULL)))
    await env.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy(
        name="plain", rule="true", target=common_pb2.Target(endpoint="qa", repository="qa/p"))))
    resp = await env.stub.Evaluate(policy_pb2.EvaluateRequest(
        endpoint="dev",
        facts=common_pb2.ImageFacts(
            repository="dev/website", tag="1.0", digest="sha256:" + "a" * 64
        ),
    ))
    by_name = {r.policy_name: r for r in resp.results}
    full = by_name["promote-website"]
    assert full.matched
    assert list(full.platforms) == FULL["platforms"]
    assert list(full.copy_referrers) == FULL["copy_referrers"]
    assert full.trigger == FULL["trigger"]
    plain = by_name["plain"]
    assert plain.matched and not plain.platforms and not plain.copy_referrers
    assert not plain.HasField("trigger")


async def test_settings_survive_a_restart(
    tmp_path: Path, transfer_double: tuple[object, int]  # noqa: F811
) -> None:
    async with serving(tmp_path, transfer_double) as e:  # type: ignore[arg-type]
        created = await e.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy(**FULL)))
    async with serving(tmp_path, transfer_double) as e:  # type: ignore[arg-type]
        got = await e.stub.GetPolicy(policy_pb2.GetPolicyRequest(id=created.id))
    assert got == created


def test_migration_3_keeps_every_row_with_todays_behaviour(tmp_path: Path) -> None:
    """A database at schema 2 (before these settings) is migrated without losing a row."""
    old = Database(tmp_path / "policy.sqlite3", MIGRATIONS[:2])
    with old.transaction() as c:
        for i in range(3):
            c.execute(
                "INSERT INTO policies (id, name, description, source_repository, rule, "
                "target_endpoint, target_repository, tag_template, time_zone, enabled, "
                "create_time_us, update_time_us, etag, version, source_endpoint) VALUES "
                "(?, ?, '', 'dev/app', 'true', 'qa', 'qa/app', '%n', '', 1, 1, 2, 'e', 1, 'dev')",
                (f"id{i}", f"p{i}"),
            )
    old.close()
    store = PolicyStore.open(tmp_path)
    try:
        assert store.db.schema_version == len(MIGRATIONS)
        recs = sorted(store.all(), key=lambda r: r.id)
        assert [r.name for r in recs] == ["p0", "p1", "p2"]
        for r in recs:
            assert (r.trigger_kind, r.platforms, r.keep_newest, r.deletions,
                    r.copy_referrers, r.signature_wait_us) == ("", (), 0, 0, (), 0)
            assert (r.rule, r.source_endpoint, r.enabled) == ("true", "dev", True)
        [[n]] = store.db.query("SELECT count(*) FROM trusted_keys")
        assert n == 0
    finally:
        store.close()
