"""Policy.source {endpoint, repository}: required, checked against the transfer service,
the deprecated source_repository refused; Evaluate, GetFactRequirements and ListPolicies
scoped by endpoint; active_since and disabled_reason."""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from mirror.v1 import common_pb2, policy_pb2

from tests.policy.policy_servicer_support import (  # noqa: F401  (fixtures)
    PolicyEnv,
    details,
    env,
    field_violations,
    policy,
    precondition_violations,
    transfer_double,
)

Source = policy_pb2.PolicySource
Target = common_pb2.Target


async def _create(env: PolicyEnv, **kw: object) -> policy_pb2.Policy:  # noqa: F811
    return await env.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy(**kw)))


async def _evaluate(
    env: PolicyEnv, endpoint: str, repository: str  # noqa: F811
) -> list[str]:
    resp = await env.stub.Evaluate(policy_pb2.EvaluateRequest(
        endpoint=endpoint, facts=common_pb2.ImageFacts(repository=repository, tag="1.0"),
    ))
    return [r.policy_name for r in resp.results]


def _mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def test_source_is_stored_and_source_repository_never_returned(env: PolicyEnv) -> None:  # noqa: F811
    created = await _create(env, source=Source(endpoint="dev", repository="team/app"))
    assert (created.source.endpoint, created.source.repository) == ("dev", "team/app")
    assert created.source_repository == ""
    got = await env.stub.GetPolicy(policy_pb2.GetPolicyRequest(id=created.id))
    assert got == created and got.source_repository == ""
    listed = await env.stub.ListPolicies(policy_pb2.ListPoliciesRequest())
    assert [p.source_repository for p in listed.policies] == [""]
    assert env.transfer.gets == ["dev"]  # the source endpoint was looked up


@pytest.mark.parametrize(
    ("source", "field", "needle"),
    [
        (Source(repository="team/app"), "policy.source.endpoint", "must not be empty"),
        (Source(endpoint="dev"), "policy.source.repository", "must not be empty"),
        (Source(endpoint="Dev!", repository="team/app"), "policy.source.endpoint", "not an"),
    ],
)
async def test_source_is_required(
    env: PolicyEnv, source: policy_pb2.PolicySource, field: str, needle: str  # noqa: F811
) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        await _create(env, source=source)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in field_violations(exc.value)[field]


async def test_unknown_source_endpoint_is_failed_precondition(env: PolicyEnv) -> None:  # noqa: F811
    for validate_only in (True, False):
        with pytest.raises(grpc.RpcError) as exc:
            await env.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(
                policy=policy(source=Source(endpoint="staging", repository="team/app")),
                validate_only=validate_only,
            ))
        assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        info = details(exc.value, error_details_pb2.ErrorInfo)
        assert [i.reason for i in info] == ["ENDPOINT_NOT_FOUND"]  # type: ignore[attr-defined]
        assert precondition_violations(exc.value)[0][1] == "endpoints/staging"
        assert "source endpoint 'staging' does not exist" in (exc.value.details() or "")
    listed = await env.stub.ListPolicies(policy_pb2.ListPoliciesRequest())
    assert list(listed.policies) == []


async def test_source_repository_is_refused_naming_the_new_field(env: PolicyEnv) -> None:  # noqa: F811
    old = policy(source_repository="dev/website")  # and no source
    with pytest.raises(grpc.RpcError) as exc:
        await env.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=old))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violation = field_violations(exc.value)["policy.source_repository"]
    assert "replaced by source {endpoint, repository}" in violation
    # Also beside a valid source, in UpdatePolicy's body, and in its mask.
    with pytest.raises(grpc.RpcError) as exc:
        await _create(env, source_repository="dev/website")
    assert "policy.source_repository" in field_violations(exc.value)
    created = await _create(env)
    for request in (
        policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(id=created.id, source_repository="dev/x"),
            update_mask=_mask("description"),
        ),
        policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(id=created.id), update_mask=_mask("source_repository")
        ),
    ):
        with pytest.raises(grpc.RpcError) as exc:
            await env.stub.UpdatePolicy(request)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "policy.source_repository" in field_violations(exc.value)
    got = await env.stub.GetPolicy(policy_pb2.GetPolicyRequest(id=created.id))
    assert got == created


async def test_only_pushes_to_the_source_endpoint_are_evaluated(env: PolicyEnv) -> None:  # noqa: F811
    env.transfer.endpoints |= {"prod"}
    await _create(env, name="dev-to-qa", source=Source(endpoint="dev", repository="qa/website"),
                  target=Target(endpoint="qa", repository="qa/website"), rule="true")
    await _create(env, name="qa-to-prod", source=Source(endpoint="qa", repository="qa/website"),
                  target=Target(endpoint="prod", repository="prod/website"), rule="true")
    # The same repository name pushed to each registry triggers only that registry's policy.
    assert await _evaluate(env, "dev", "qa/website") == ["dev-to-qa"]
    assert await _evaluate(env, "qa", "qa/website") == ["qa-to-prod"]
    assert await _evaluate(env, "prod", "qa/website") == []
    assert await _evaluate(env, "elsewhere", "qa/website") == []
    req = await env.stub.GetFactRequirements(
        policy_pb2.GetFactRequirementsRequest(endpoint="qa", repository="qa/website")
    )
    assert req.policy_count == 1
    none = await env.stub.GetFactRequirements(
        policy_pb2.GetFactRequirementsRequest(endpoint="prod", repository="qa/website")
    )
    assert none.policy_count == 0


async def test_evaluate_and_requirements_need_an_endpoint(env: PolicyEnv) -> None:  # noqa: F811
    await _create(env, rule="true")
    with pytest.raises(grpc.RpcError) as exc:
        await env.stub.Evaluate(policy_pb2.EvaluateRequest(
            facts=common_pb2.ImageFacts(repository="dev/website", tag="1.0")
        ))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "endpoint" in field_violations(exc.value)
    with pytest.raises(grpc.RpcError) as exc:
        await env.stub.GetFactRequirements(
            policy_pb2.GetFactRequirementsRequest(repository="dev/website")
        )
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "endpoint" in field_violations(exc.value)


async def test_moving_the_source_to_another_endpoint_moves_the_policy(env: PolicyEnv) -> None:  # noqa: F811
    env.transfer.endpoints |= {"staging"}
    p = await _create(env, rule="true")
    assert await _evaluate(env, "dev", "dev/website") == ["promote-website"]
    env.transfer.gets.clear()
    await env.stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
        policy=policy_pb2.Policy(id=p.id, source=Source(endpoint="staging")),
        update_mask=_mask("source.endpoint"),
    ))
    assert env.transfer.gets == ["staging"]
    assert await _evaluate(env, "dev", "dev/website") == []
    assert await _evaluate(env, "staging", "dev/website") == ["promote-website"]
    with pytest.raises(grpc.RpcError) as exc:
        await env.stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(id=p.id, source=Source(endpoint="gone")),
            update_mask=_mask("source.endpoint"),
        ))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await _evaluate(env, "staging", "dev/website") == ["promote-website"]


async def test_list_filters_by_source_endpoint_and_by_any_endpoint(env: PolicyEnv) -> None:  # noqa: F811
    env.transfer.endpoints |= {"prod", "ops"}
    await _create(env, name="a", source=Source(endpoint="dev", repository="team/a"),
                  target=Target(endpoint="qa", repository="team/a"))
    await _create(env, name="b", source=Source(endpoint="qa", repository="team/b"),
                  target=Target(endpoint="prod", repository="team/b"))
    await _create(env, name="c", source=Source(endpoint="dev", repository="team/*"),
                  target=Target(endpoint="ops", repository="c/{path}"))

    async def names(**kw: str) -> list[str]:
        resp = await env.stub.ListPolicies(policy_pb2.ListPoliciesRequest(**kw))  # type: ignore[arg-type]
        return [p.name for p in resp.policies]

    assert await names(source_endpoint="dev") == ["a", "c"]
    assert await names(source_endpoint="qa") == ["b"]
    assert await names(endpoint="qa") == ["a", "b"]  # a targets qa, b reads it
    assert await names(endpoint="ops") == ["c"]
    assert await names(endpoint="nowhere") == []
    assert await names(source_endpoint="dev", source_repository="team/a") == ["a", "c"]
    assert await names(source_endpoint="qa", source_repository="team/a") == []
    assert await names(source_repository="team/b") == ["b", "c"]
    assert await names(endpoint="prod", source_repository="team/b") == ["b"]
    # A page token is bound to every filter.
    page = await env.stub.ListPolicies(
        policy_pb2.ListPoliciesRequest(page_size=1, source_endpoint="dev")
    )
    assert [p.name for p in page.policies] == ["a"] and page.next_page_token
    rest = await env.stub.ListPolicies(policy_pb2.ListPoliciesRequest(
        page_size=1, source_endpoint="dev", page_token=page.next_page_token
    ))
    assert [p.name for p in rest.policies] == ["c"]
    with pytest.raises(grpc.RpcError) as exc:
        await env.stub.ListPolicies(policy_pb2.ListPoliciesRequest(
            page_size=1, endpoint="dev", page_token=page.next_page_token
        ))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_filters_by_trigger(env: PolicyEnv) -> None:  # noqa: F811
    from google.protobuf.duration_pb2 import Duration

    every = policy_pb2.PolicyTrigger(
        schedule=policy_pb2.ScheduleTrigger(interval=Duration(seconds=30))
    )
    await _create(env, name="default", source="team/a", target=Target(endpoint="qa",
                  repository="qa/a"))
    await _create(env, name="pushed", source="team/b", target=Target(endpoint="qa",
                  repository="qa/b"), trigger=policy_pb2.PolicyTrigger(
                      push=policy_pb2.PushTrigger()))
    await _create(env, name="pull", source="team/c", target=Target(endpoint="qa",
                  repository="qa/c"), trigger=every)
    await _create(env, name="by-hand", source="team/d", target=Target(endpoint="qa",
                  repository="qa/d"), trigger=policy_pb2.PolicyTrigger(
                      manual=policy_pb2.ManualTrigger()))

    async def names(trigger: str) -> list[str]:
        resp = await env.stub.ListPolicies(policy_pb2.ListPoliciesRequest(trigger=trigger))
        return [p.name for p in resp.policies]

    assert await names("push") == ["default", "pushed"]  # no trigger set is push
    assert await names("schedule") == ["pull"]
    assert await names("manual") == ["by-hand"]
    assert await names("") == ["by-hand", "default", "pull", "pushed"]
    with pytest.raises(grpc.RpcError) as exc:
        await names("cron")
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "push, schedule, manual" in (exc.value.details() or "")


async def test_active_since_is_set_when_enabled_and_output_only(env: PolicyEnv) -> None:  # noqa: F811
    before = time.time()
    on = await _create(env, name="on")
    assert before - 1 <= on.active_since.ToMicroseconds() / 1e6 <= time.time() + 1
    assert on.active_since == on.create_time
    off = await _create(env, name="off", enabled=False,
                        source=Source(endpoint="dev", repository="dev/other"),
                        target=Target(endpoint="qa", repository="qa/other"))
    assert not off.HasField("active_since")
    # An update that leaves it enabled keeps active_since; enabling sets it.
    edited = await env.stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
        policy=policy_pb2.Policy(id=on.id, description="x"), update_mask=_mask("description")
    ))
    assert edited.active_since == on.active_since
    enabled = await env.stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
        policy=policy_pb2.Policy(id=off.id, enabled=True), update_mask=_mask("enabled")
    ))
    assert enabled.active_since == enabled.update_time
    disabled = await env.stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
        policy=policy_pb2.Policy(id=off.id, enabled=False), update_mask=_mask("enabled")
    ))
    assert disabled.active_since == enabled.active_since  # when it was last enabled
    again = await env.stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
        policy=policy_pb2.Policy(id=off.id, enabled=True), update_mask=_mask("enabled")
    ))
    assert again.active_since.ToMicroseconds() > enabled.active_since.ToMicroseconds()
    for path in ("active_since", "disabled_reason"):
        with pytest.raises(grpc.RpcError) as exc:
            await env.stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
                policy=policy_pb2.Policy(id=on.id), update_mask=_mask(path)
            ))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Values sent for output-only fields are ignored.
    ignored = await _create(env, name="ignored", enabled=False,
                            source=Source(endpoint="dev", repository="dev/third"),
                            target=Target(endpoint="qa", repository="qa/third"),
                            disabled_reason="mine", active_since=on.create_time)
    assert not ignored.HasField("active_since") and ignored.disabled_reason == ""
