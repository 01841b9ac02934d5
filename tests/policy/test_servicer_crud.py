"""PolicyService CRUD over a real grpc.aio server: validation, errors with details, etags,
paging, push checks through a transfer-service test double."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc import aio
from mirror.v1 import common_pb2, policy_pb2

from policy_service.push_check import GrpcPushChecker
from policy_service.servicer import PolicyServicer
from policy_service.store import PolicyRecord, PolicyStore
from servicekit import errors
from tests.policy.policy_servicer_support import (  # noqa: F401  (fixtures)
    Check,
    PolicyEnv,
    details,
    env,
    field_violations,
    policy,
    precondition_violations,
    transfer_double,
)


async def _create(env: PolicyEnv, **kw: object) -> policy_pb2.Policy:  # noqa: F811
    return await env.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy(**kw)))


async def _count(env: PolicyEnv) -> int:  # noqa: F811
    resp = await env.stub.ListPolicies(policy_pb2.ListPoliciesRequest(page_size=1000))
    return len(resp.policies)


async def test_create_then_get_returns_the_stored_policy(env: PolicyEnv) -> None:  # noqa: F811
    created = await _create(env, time_zone="Europe/Paris")
    assert created.id and created.etag
    assert created.create_time.seconds > 0 and created.update_time == created.create_time
    assert created.tag_template == "%n"  # the default
    assert list(created.required_facts) == [
        common_pb2.FACT_KIND_REFERENCE, common_pb2.FACT_KIND_VULNERABILITIES,
    ]
    got = await env.stub.GetPolicy(policy_pb2.GetPolicyRequest(id=created.id))
    assert got == created
    assert got.target.endpoint == "qa" and got.target.repository == "qa/website"
    assert got.time_zone == "Europe/Paris" and got.enabled
    # The push check was asked exactly for the target, with check_push.
    [call] = env.transfer.calls
    assert (call.endpoint, call.repository, call.check_push) == ("qa", "qa/website", True)


async def test_validate_only_checks_everything_and_saves_nothing(env: PolicyEnv) -> None:  # noqa: F811
    out = await env.stub.CreatePolicy(
        policy_pb2.CreatePolicyRequest(policy=policy(), validate_only=True)
    )
    assert out.id == "" and out.name == "promote-website" and len(out.required_facts) == 2
    assert len(env.transfer.calls) == 1
    assert await _count(env) == 0
    env.transfer.endpoints.clear()
    with pytest.raises(grpc.RpcError) as exc:
        await env.stub.CreatePolicy(
            policy_pb2.CreatePolicyRequest(policy=policy(), validate_only=True)
        )
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    ("overrides", "field", "needle"),
    [
        (
            {"rule": 'tag endswith "stable" and critcal_vulns <= 3'},
            "policy.rule",
            "line 1, column 27: unknown field 'critcal_vulns'; did you mean 'critical_vulns'?",
        ),
        ({"rule": ""}, "policy.rule", "line 1, column 1"),
        ({"tag_template": "%Q"}, "policy.tag_template", "unknown specifier '%Q'"),
        ({"time_zone": "Mars/Olympus"}, "policy.time_zone", "unknown time zone"),
        (  # %Z renders "+04" there, which cannot be in a tag
            {"tag_template": "%n-%Z", "time_zone": "Asia/Dubai"},
            "policy.tag_template",
            "not valid in a tag",
        ),
        ({"source": "Dev/Website"}, "policy.source.repository", "not a valid"),
        ({"source": "dev//website"}, "policy.source.repository", "not a valid"),
        ({"source": "dev/web**"}, "policy.source.repository", "whole path segment"),
        ({"source": "dev/*-"}, "policy.source.repository", "segment"),
        ({"name": ""}, "policy.name", "must not be empty"),
        ({"target": common_pb2.Target()}, "policy.target.endpoint", "must not be empty"),
        (
            {"target": common_pb2.Target(endpoint="qa", repository="QA/x")},
            "policy.target.repository",
            "not a valid repository name",
        ),
    ],
)
async def test_invalid_policy_is_invalid_argument_with_field_violation(
    env: PolicyEnv, overrides: dict[str, object], field: str, needle: str  # noqa: F811
) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        await _create(env, **overrides)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(exc.value)
    assert field in violations, violations
    assert needle in violations[field]
    assert field.removeprefix("policy.") in exc.value.details()
    assert await _count(env) == 0
    assert env.transfer.calls == []  # refused before asking anyone


async def test_every_problem_is_reported_at_once(env: PolicyEnv) -> None:  # noqa: F811
    with pytest.raises(grpc.RpcError) as exc:
        await _create(env, name="", rule="tag ==", time_zone="Nowhere/Town")
    assert set(field_violations(exc.value)) == {"policy.name", "policy.rule", "policy.time_zone"}


async def test_names_are_unique(env: PolicyEnv) -> None:  # noqa: F811
    await _create(env)
    with pytest.raises(grpc.RpcError) as exc:
        await _create(env, source="dev/other")
    assert exc.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await _count(env) == 1


async def test_unknown_endpoint_is_failed_precondition(env: PolicyEnv) -> None:  # noqa: F811
    with pytest.raises(grpc.RpcError) as exc:
        await _create(env, target=common_pb2.Target(endpoint="prod", repository="x/y"))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    [(kind, subject, desc)] = precondition_violations(exc.value)
    assert kind == "ENDPOINT_EXISTS" and subject == "endpoints/prod" and "prod" in desc
    assert await _count(env) == 0


async def test_target_without_push_permission_is_refused(env: PolicyEnv) -> None:  # noqa: F811
    env.transfer.failures[("qa", "qa/website")] = (
        Check.STEP_PUSH_ALLOWED, "denied: requested access to the resource is denied",
    )
    with pytest.raises(grpc.RpcError) as exc:
        await _create(env)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    [(kind, subject, desc)] = precondition_violations(exc.value)
    assert kind == "STEP_PUSH_ALLOWED"
    assert subject == "endpoints/qa/repositories/qa/website"
    assert desc == "denied: requested access to the resource is denied"
    assert "STEP_PUSH_ALLOWED" in exc.value.details()
    info = details(exc.value, error_details_pb2.ErrorInfo)
    assert [i.reason for i in info] == ["TARGET_NOT_PUSHABLE"]  # type: ignore[attr-defined]
    assert await _count(env) == 0


async def test_get_unknown_is_not_found(env: PolicyEnv) -> None:  # noqa: F811
    with pytest.raises(grpc.RpcError) as exc:
        await env.stub.GetPolicy(policy_pb2.GetPolicyRequest(id="nope"))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as exc:
        await env.stub.GetPolicy(policy_pb2.GetPolicyRequest(id=""))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def _mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def test_update_with_mask_changes_only_named_fields(env: PolicyEnv) -> None:  # noqa: F811
    created = await _create(env)
    change = policy_pb2.Policy(id=created.id, description="new words", rule="false")
    updated = await env.stub.UpdatePolicy(
        policy_pb2.UpdatePolicyRequest(policy=change, update_mask=_mask("description"))
    )
    assert updated.description == "new words"
    assert updated.rule == created.rule and updated.name == created.name
    assert updated.etag != created.etag
    assert updated.create_time == created.create_time
    assert updated.update_time.ToMicroseconds() > created.update_time.ToMicroseconds()
    assert len(env.transfer.calls) == 1  # target unchanged: no new push check
    got = await env.stub.GetPolicy(policy_pb2.GetPolicyRequest(id=created.id))
    assert got == updated


async def test_update_with_empty_mask_replaces_every_mutable_field(env: PolicyEnv) -> None:  # noqa: F811
    created = await _create(env)
    replacement = policy(
        id=created.id, name="renamed", description="", source="dev/**",
        rule="true", tag_template="%Y", time_zone="Asia/Tokyo", enabled=False,
    )
    replacement.create_time.seconds = 1  # ignored: immutable
    updated = await env.stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(policy=replacement))
    assert (updated.name, updated.description, updated.source.repository, updated.rule) == (
        "renamed", "", "dev/**", "true"
    )
    assert (updated.tag_template, updated.time_zone, updated.enabled) == ("%Y", "Asia/Tokyo", False)
    assert updated.create_time == created.create_time
    assert list(updated.required_facts) == []


@pytest.mark.parametrize("path", ["colour", "target.url", "create_time", "id"])
async def test_update_mask_with_bad_field_is_invalid_argument(
    env: PolicyEnv, path: str  # noqa: F811
) -> None:
    created = await _create(env)
    with pytest.raises(grpc.RpcError) as exc:
        await env.stub.UpdatePolicy(
            policy_pb2.UpdatePolicyRequest(
                policy=policy_pb2.Policy(id=created.id, description="x"),
                update_mask=_mask("description", path),
            )
        )
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(exc.value)
    assert list(violations) == [f"update_mask.paths[{path!r}]"]
    got = await env.stub.GetPolicy(policy_pb2.GetPolicyRequest(id=created.id))
    assert got == created


async def test_update_with_stale_etag_is_aborted(env: PolicyEnv) -> None:  # noqa: F811
    created = await _create(env)
    first = await env.stub.UpdatePolicy(
        policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(id=created.id, etag=created.etag, description="one"),
            update_mask=_mask("description"),
        )
    )
    with pytest.raises(grpc.RpcError) as exc:
        await env.stub.UpdatePolicy(
            policy_pb2.UpdatePolicyRequest(
                policy=policy_pb2.Policy(id=created.id, etag=created.etag, description="two"),
                update_mask=_mask("description"),
            )
        )
    assert exc.value.code() == grpc.StatusCode.ABORTED
    info = details(exc.value, error_details_pb2.ErrorInfo)
    assert [i.reason for i in info] == ["ETAG_MISMATCH"]  # type: ignore[attr-defined]
    got = await env.stub.GetPolicy(policy_pb2.GetPolicyRequest(id=created.id))
    assert got.description == "one" and got.etag == first.etag


async def test_update_of_target_is_push_checked(env: PolicyEnv) -> None:  # noqa: F811
    created = await _create(env)
    env.transfer.failures[("qa", "qa/locked")] = (Check.STEP_AUTHENTICATED, "bad password")
    with pytest.raises(grpc.RpcError) as exc:
        await env.stub.UpdatePolicy(
            policy_pb2.UpdatePolicyRequest(
                policy=policy_pb2.Policy(
                    id=created.id, target=common_pb2.Target(repository="qa/locked")
                ),
                update_mask=_mask("target.repository"),
            )
        )
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert precondition_violations(exc.value) == [
        ("STEP_AUTHENTICATED", "endpoints/qa/repositories/qa/locked", "bad password")
    ]
    assert (await env.stub.GetPolicy(policy_pb2.GetPolicyRequest(id=created.id))) == created
    ok = await env.stub.UpdatePolicy(
        policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(id=created.id, target=common_pb2.Target(repository="qa/w2")),
            update_mask=_mask("target.repository"),
        )
    )
    assert ok.target.endpoint == "qa" and ok.target.repository == "qa/w2"
    assert [c.repository for c in env.transfer.calls] == ["qa/website", "qa/locked", "qa/w2"]


async def test_update_invalid_rule_keeps_the_old_policy(env: PolicyEnv) -> None:  # noqa: F811
    created = await _create(env)
    with pytest.raises(grpc.RpcError) as exc:
        await env.stub.UpdatePolicy(
            policy_pb2.UpdatePolicyRequest(
                policy=policy_pb2.Policy(id=created.id, rule="tag startswith"),
                update_mask=_mask("rule"),
            )
        )
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "policy.rule" in field_violations(exc.value)
    assert (await env.stub.GetPolicy(policy_pb2.GetPolicyRequest(id=created.id))) == created


async def test_update_to_a_taken_name_is_already_exists(env: PolicyEnv) -> None:  # noqa: F811
    await _create(env, name="a")
    b = await _create(env, name="b")
    with pytest.raises(grpc.RpcError) as exc:
        await env.stub.UpdatePolicy(
            policy_pb2.UpdatePolicyRequest(
                policy=policy_pb2.Policy(id=b.id, name="a"), update_mask=_mask("name")
            )
        )
    assert exc.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_update_unknown_policy_is_not_found(env: PolicyEnv) -> None:  # noqa: F811
    with pytest.raises(grpc.RpcError) as exc:
        await env.stub.UpdatePolicy(
            policy_pb2.UpdatePolicyRequest(policy=policy(id="missing"))
        )
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


async def test_delete_checks_the_etag_then_deletes(env: PolicyEnv) -> None:  # noqa: F811
    created = await _create(env)
    with pytest.raises(grpc.RpcError) as exc:
        await env.stub.DeletePolicy(policy_pb2.DeletePolicyRequest(id=created.id, etag="0-old"))
    assert exc.value.code() == grpc.StatusCode.ABORTED
    assert await _count(env) == 1
    await env.stub.DeletePolicy(policy_pb2.DeletePolicyRequest(id=created.id, etag=created.etag))
    assert await _count(env) == 0
    with pytest.raises(grpc.RpcError) as exc:
        await env.stub.GetPolicy(policy_pb2.GetPolicyRequest(id=created.id))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as exc:
        await env.stub.DeletePolicy(policy_pb2.DeletePolicyRequest(id=created.id))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    # Deleted policies are no longer evaluated.
    resp = await env.stub.Evaluate(
        policy_pb2.EvaluateRequest(
            endpoint="dev", facts=common_pb2.ImageFacts(repository="dev/website", tag="s")
        )
    )
    assert list(resp.results) == []


async def test_list_pages_through_every_policy_in_name_order(env: PolicyEnv) -> None:  # noqa: F811
    names = [f"p{i:02d}" for i in range(7)]
    for n in reversed(names):
        await _create(env, name=n)
    seen, token, pages = [], "", 0
    while True:
        resp = await env.stub.ListPolicies(
            policy_pb2.ListPoliciesRequest(page_size=3, page_token=token)
        )
        pages += 1
        seen += [p.name for p in resp.policies]
        assert all(p.required_facts for p in resp.policies)
        token = resp.next_page_token
        if not token:
            break
    assert seen == names and pages == 3


async def test_list_token_is_tied_to_its_filter(env: PolicyEnv) -> None:  # noqa: F811
    for i in range(3):
        await _create(env, name=f"p{i}")
    resp = await env.stub.ListPolicies(
        policy_pb2.ListPoliciesRequest(page_size=1, source_repository="dev/website")
    )
    assert resp.next_page_token
    for bad in (
        policy_pb2.ListPoliciesRequest(page_token=resp.next_page_token),
        policy_pb2.ListPoliciesRequest(page_token="%%%not-a-token"),
        policy_pb2.ListPoliciesRequest(page_size=-1),
    ):
        with pytest.raises(grpc.RpcError) as exc:
            await env.stub.ListPolicies(bad)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_filters_by_source_including_globs(env: PolicyEnv) -> None:  # noqa: F811
    sources = {
        "exact": "dev/website", "one-level": "dev/*", "any-depth": "dev/**",
        "suffix": "**/website", "other": "prod/website", "deep-only": "dev/*/website",
        "prefix": "dev/web*",
    }
    for name, src in sources.items():
        await _create(
            env, name=name, source=src,
            target=common_pb2.Target(endpoint="qa", repository="qa/{repository}"),
        )

    async def names(filter_: str) -> set[str]:
        resp = await env.stub.ListPolicies(
            policy_pb2.ListPoliciesRequest(source_repository=filter_)
        )
        return {p.name for p in resp.policies}

    assert await names("dev/website") == {"exact", "one-level", "any-depth", "suffix", "prefix"}
    assert await names("dev/team/website") == {"any-depth", "suffix", "deep-only"}
    assert await names("prod/website") == {"other", "suffix"}
    assert await names("dev/api") == {"one-level", "any-depth"}
    assert await names("dev/**") == {"any-depth"}  # a glob filter compares literally
    assert await names("nothing/here") == set()
    assert len(await names("")) == len(sources)


async def test_stored_policy_that_no_longer_compiles_is_listed_not_evaluated(
    tmp_path: Path,
) -> None:
    store = PolicyStore.open(tmp_path)
    good = PolicyRecord(
        id="good", name="good", description="", source_repository="dev/*", rule="true",
        source_endpoint="dev", target_endpoint="qa", target_repository="qa/{path}",
        tag_template="%n", time_zone="",
        enabled=True, create_time_us=1, update_time_us=1, etag="1-a", version=1,
    )
    # As if written by a version whose rule language knew a field this one does not.
    stale = good.evolve(id="stale", name="stale", rule="signed == true")
    store.insert_many([good, stale])
    servicer = PolicyServicer(store, None)
    got = await servicer.GetPolicy(policy_pb2.GetPolicyRequest(id="stale"), None)  # type: ignore[arg-type]
    assert got.rule == "signed == true" and list(got.required_facts) == []
    resp = await servicer.Evaluate(
        policy_pb2.EvaluateRequest(
            endpoint="dev", facts=common_pb2.ImageFacts(repository="dev/a", tag="t")
        ),
        None,  # type: ignore[arg-type]
    )
    assert [(r.policy_id, r.matched) for r in resp.results] == [("good", True), ("stale", False)]
    assert "no longer compiles" in resp.results[1].reason
    # Fixing the rule brings it back.
    fixed = await servicer.UpdatePolicy(
        policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(id="stale", rule="true"), update_mask=_mask("rule")
        ),
        None,  # type: ignore[arg-type]
    )
    assert fixed.rule == "true"
    resp = await servicer.Evaluate(
        policy_pb2.EvaluateRequest(
            endpoint="dev", facts=common_pb2.ImageFacts(repository="dev/a", tag="t")
        ),
        None,  # type: ignore[arg-type]
    )
    assert [(r.policy_id, r.matched) for r in resp.results] == [("good", True), ("stale", True)]
    store.close()


async def test_unreachable_transfer_service_is_unavailable() -> None:
    async with aio.insecure_channel("127.0.0.1:1") as channel:
        with pytest.raises(errors.ApiError) as exc:
            await GrpcPushChecker(channel, timeout=5).check("qa", "qa/website")
    assert exc.value.code == grpc.StatusCode.UNAVAILABLE
    assert "cannot check push permission" in exc.value.message
