"""Loops refused at save: a policy that could write into its own source, and cycles of
policies that would make new tags forever; %n mirror cycles are allowed. Checked on create
(validate_only too), update and enabling."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2
from mirror.v1 import common_pb2, policy_pb2

from tests.policy.policy_servicer_support import (  # noqa: F401  (fixtures)
    PolicyEnv,
    env,
    field_violations,
    policy,
    precondition_violations,
    transfer_double,
)

Source = policy_pb2.PolicySource
Target = common_pb2.Target


def _hop(name: str, src: str, dst: str, template: str = "%n", **kw: object) -> policy_pb2.Policy:
    """A policy from "endpoint/repository" to "endpoint/repository" (first segment: endpoint)."""
    se, sr = src.split("/", 1)
    te, tr = dst.split("/", 1)
    return policy(name=name, rule="true", source=Source(endpoint=se, repository=sr),
                  target=Target(endpoint=te, repository=tr), tag_template=template, **kw)


async def _save(env: PolicyEnv, p: policy_pb2.Policy,  # noqa: F811
                validate_only: bool = False) -> policy_pb2.Policy:
    return await env.stub.CreatePolicy(
        policy_pb2.CreatePolicyRequest(policy=p, validate_only=validate_only)
    )


async def _refused(env: PolicyEnv, p: policy_pb2.Policy) -> grpc.RpcError:  # noqa: F811
    """Refused with validate_only and without; the error of the real attempt."""
    for validate_only in (True, False):
        with pytest.raises(grpc.RpcError) as exc:
            await _save(env, p, validate_only)
    return exc.value


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("qa/team/app", "qa/team/app"),  # the same-name mirror onto its own registry
        ("dev/team/**", "dev/team/mirror/{path}"),  # writes below what it reads
        ("dev/team/*", "dev/{repository}"),  # team/a -> team/a
        ("dev/**/app", "dev/copy/{path}"),  # copy/x/app matches **/app again
    ],
)
async def test_a_policy_writing_into_its_own_source_is_refused(
    env: PolicyEnv, src: str, dst: str  # noqa: F811
) -> None:
    err = await _refused(env, _hop("self", src, dst))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    text = field_violations(err)["policy.target"]
    assert "own source" in text and f"policy self ({src} -> {dst})" in text
    assert env.transfer.calls == [] and env.transfer.gets == []


async def test_a_same_endpoint_copy_elsewhere_is_allowed(env: PolicyEnv) -> None:  # noqa: F811
    copy = await _save(env, _hop("copy", "dev/team/app", "dev/team/app-copy"))
    mirror = await _save(env, _hop("mirror", "dev/team/*", "dev/mirror/{path}"))
    assert (copy.source.endpoint, copy.target.endpoint) == ("dev", "dev")
    assert (mirror.source.repository, mirror.target.repository) == ("team/*", "mirror/{path}")
    listed = await env.stub.ListPolicies(policy_pb2.ListPoliciesRequest())
    assert sorted(p.name for p in listed.policies) == ["copy", "mirror"]


async def test_a_cycle_with_a_timestamp_template_is_refused_and_spelled_out(
    env: PolicyEnv,  # noqa: F811
) -> None:
    await _save(env, _hop("a", "dev/team/app", "qa/team/app", "%Y%m%d-%H%M%S"))
    err = await _refused(env, _hop("b", "qa/team/app", "dev/team/app"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    path = (
        "policy b (qa/team/app -> dev/team/app) -> policy a (dev/team/app -> qa/team/app) "
        "-> policy b"
    )
    assert path in (err.details() or "")
    [(kind, _, described)] = precondition_violations(err)
    assert kind == "POLICY_CYCLE" and described == path
    listed = await env.stub.ListPolicies(policy_pb2.ListPoliciesRequest())
    assert [p.name for p in listed.policies] == ["a"]


async def test_a_longer_cycle_is_found_through_globs(env: PolicyEnv) -> None:  # noqa: F811
    env.transfer.endpoints |= {"prod"}
    await _save(env, _hop("a", "dev/team/**", "qa/team/{path}"))
    await _save(env, _hop("b", "qa/team/*", "prod/{repository}"))
    err = await _refused(env, _hop("c", "prod/team/app", "dev/team/app", "%n-copy"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (
        "policy c (prod/team/app -> dev/team/app) -> policy a (dev/team/** -> qa/team/{path}) "
        "-> policy b (qa/team/* -> prod/{repository}) -> policy c"
    ) in (err.details() or "")


async def test_a_cycle_of_plain_mirrors_is_allowed(env: PolicyEnv) -> None:  # noqa: F811
    await _save(env, _hop("a", "dev/team/app", "qa/team/app"))
    await _save(env, _hop("b", "qa/team/app", "dev/team/app"))
    listed = await env.stub.ListPolicies(policy_pb2.ListPoliciesRequest())
    assert len(listed.policies) == 2


async def test_a_cycle_is_checked_again_on_update_and_on_enabling(env: PolicyEnv) -> None:  # noqa: F811
    a = await _save(env, _hop("a", "dev/team/app", "qa/team/app"))
    b = await _save(env, _hop("b", "qa/team/app", "dev/team/app"))
    # Giving a a timestamp template closes a tag-making cycle.
    with pytest.raises(grpc.RpcError) as exc:
        await env.stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(id=a.id, tag_template="%Y%m%d%H%M%S"),
            update_mask=field_mask_pb2.FieldMask(paths=["tag_template"]),
        ))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "policy a (dev/team/app -> qa/team/app) -> policy b" in (exc.value.details() or "")
    # Disabled, b is no part of the graph: then a may change, and b may not be enabled.
    await env.stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
        policy=policy_pb2.Policy(id=b.id, enabled=False),
        update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
    ))
    await env.stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
        policy=policy_pb2.Policy(id=a.id, tag_template="%Y%m%d%H%M%S"),
        update_mask=field_mask_pb2.FieldMask(paths=["tag_template"]),
    ))
    with pytest.raises(grpc.RpcError) as exc:
        await env.stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(id=b.id, enabled=True),
            update_mask=field_mask_pb2.FieldMask(paths=["enabled"]),
        ))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "policy b (qa/team/app -> dev/team/app) -> policy a" in (exc.value.details() or "")
    got = await env.stub.GetPolicy(policy_pb2.GetPolicyRequest(id=b.id))
    assert not got.enabled
    # An update turning a policy into its own source is refused too.
    with pytest.raises(grpc.RpcError) as exc:
        await env.stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(id=b.id, target=Target(endpoint="qa")),
            update_mask=field_mask_pb2.FieldMask(paths=["target.endpoint"]),
        ))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "own source" in field_violations(exc.value)["policy.target"]


async def test_promotion_chain_is_no_cycle(env: PolicyEnv) -> None:  # noqa: F811
    env.transfer.endpoints |= {"prod"}
    await _save(env, _hop("to-qa", "dev/team/website", "qa/qa/team/website", "%Y%m%d-%H%M"))
    await _save(env, _hop("to-prod", "qa/qa/team/website", "prod/team/website", "%n"))
    listed = await env.stub.ListPolicies(policy_pb2.ListPoliciesRequest())
    assert len(listed.policies) == 2


async def test_validate_only_with_an_id_checks_a_replacement(env: PolicyEnv) -> None:  # noqa: F811
    a = await _save(env, _hop("a", "dev/team/app", "qa/team/app"))
    await _save(env, _hop("b", "qa/team/app", "dev/team/app"))
    same = _hop("a", "dev/team/app", "qa/team/app", id=a.id)
    out = await _save(env, same, validate_only=True)  # its own name and old version: no clash
    assert out.id == a.id
    with pytest.raises(grpc.RpcError) as exc:
        await _save(env, _hop("a", "dev/team/app", "qa/team/app"), validate_only=True)
    assert exc.value.code() == grpc.StatusCode.ALREADY_EXISTS
    stamped = _hop("a", "dev/team/app", "qa/team/app", "%Y%m%d%H%M%S", id=a.id)
    with pytest.raises(grpc.RpcError) as exc:
        await _save(env, stamped, validate_only=True)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "policy a (dev/team/app -> qa/team/app) -> policy b" in (exc.value.details() or "")
    with pytest.raises(grpc.RpcError) as exc:
        await _save(env, _hop("z", "dev/z", "qa/z", id="missing"), validate_only=True)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    got = await env.stub.GetPolicy(policy_pb2.GetPolicyRequest(id=a.id))
    assert got == a
