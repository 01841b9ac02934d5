"""Target mapping ({repository}, {path}), the refusals that keep one push = one copy (a glob
onto one repository, two sources onto one destination) and overwrite control."""

from __future__ import annotations

import grpc
import pytest
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


async def _create(env: PolicyEnv, validate_only: bool = False,  # noqa: F811
                  **kw: object) -> policy_pb2.Policy:
    return await env.stub.CreatePolicy(
        policy_pb2.CreatePolicyRequest(policy=policy(**kw), validate_only=validate_only)
    )


async def _results(env: PolicyEnv, repository: str) -> list[policy_pb2.PolicyResult]:  # noqa: F811
    resp = await env.stub.Evaluate(policy_pb2.EvaluateRequest(
        endpoint="dev", facts=common_pb2.ImageFacts(repository=repository, tag="1.0"),
    ))
    return list(resp.results)


@pytest.mark.parametrize(
    ("source", "target", "repository", "rendered"),
    [
        ("team/**", "mirror/{path}", "team/sub/b", "mirror/sub/b"),
        ("team/**", "mirror/{path}", "team/a", "mirror/a"),
        ("team/*", "mirror/{path}", "team/a", "mirror/a"),
        ("team/*", "qa/{repository}", "team/a", "qa/team/a"),
        ("team/app", "qa/{repository}", "team/app", "qa/team/app"),
        ("**/website", "copy/{path}", "a/b/website", "copy/a/b/website"),
        ("team/web*", "w/{path}-copy", "team/website", "w/website-copy"),
    ],
)
async def test_target_placeholders_render_per_repository(
    env: PolicyEnv, source: str, target: str, repository: str, rendered: str  # noqa: F811
) -> None:
    created = await _create(env, rule="true", source=source,
                            target=Target(endpoint="qa", repository=target))
    assert created.target.repository == target  # stored as written
    [r] = await _results(env, repository)
    assert r.matched and (r.target.endpoint, r.target.repository) == ("qa", rendered)


async def test_a_glob_maps_to_distinct_repositories(env: PolicyEnv) -> None:  # noqa: F811
    await _create(env, rule="true", source="team/**",
                  target=Target(endpoint="qa", repository="mirror/{path}"))
    a = (await _results(env, "team/a"))[0].target.repository
    b = (await _results(env, "team/sub/b"))[0].target.repository
    assert (a, b) == ("mirror/a", "mirror/sub/b")


async def test_push_check_asks_about_a_rendered_example(env: PolicyEnv) -> None:  # noqa: F811
    await _create(env, source="team/**", target=Target(endpoint="qa", repository="m/{path}"))
    assert [(c.endpoint, c.repository) for c in env.transfer.calls] == [("qa", "m/a")]


async def test_rendered_name_that_is_not_valid_does_not_match(env: PolicyEnv) -> None:  # noqa: F811
    # 200 + len("team/") + the repository: longer than the 255 characters a name may have.
    await _create(env, rule="true", source="team/**",
                  target=Target(endpoint="qa", repository="x" * 200 + "/{repository}"))
    [r] = await _results(env, "team/" + "a" * 60)
    assert not r.matched and not r.blocked
    assert "cannot be used" in r.reason and "longer than 255" in r.reason


@pytest.mark.parametrize(
    ("source", "target", "needles"),
    [
        ("team/**", "mirror/all", ["'team/**'", "'mirror/all'", "'team/a'", "'team/b/c'"]),
        ("team/*", "qa/one", ["'team/*'", "'qa/one'", "'team/a'", "'team/b'"]),
        ("team/app", "mirror/{path}", ["{path}", "not a glob"]),
        ("team/*", "mirror/{name}", ["unknown placeholder {name}"]),
        ("team/*", "mirror/{path", ["braces"]),
        ("team/*", "Mirror/{path}", ["not a valid repository name"]),
    ],
)
async def test_bad_mappings_are_refused_at_save(
    env: PolicyEnv, source: str, target: str, needles: list[str]  # noqa: F811
) -> None:
    for validate_only in (True, False):
        with pytest.raises(grpc.RpcError) as exc:
            await _create(env, validate_only=validate_only, source=source,
                          target=Target(endpoint="qa", repository=target))
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        text = field_violations(exc.value)["policy.target.repository"]
        for needle in needles:
            assert needle in text, text
    assert env.transfer.calls == []  # refused before asking anyone


async def test_two_sources_onto_one_destination_are_refused_naming_both(env: PolicyEnv) -> None:  # noqa: F811
    await _create(env, name="first", source="team/a",
                  target=Target(endpoint="qa", repository="mirror/app"))
    cases = [
        # another exact source, the same exact target
        dict(source="team/b", target=Target(endpoint="qa", repository="mirror/app")),
        # a glob whose {path} lands on it: other/app -> mirror/app
        dict(source="other/*", target=Target(endpoint="qa", repository="mirror/{path}")),
        # the same repository name on another source endpoint
        dict(source=Source(endpoint="qa", repository="team/a"),
             target=Target(endpoint="qa", repository="mirror/app")),
    ]
    for case in cases:
        for validate_only in (True, False):
            with pytest.raises(grpc.RpcError) as exc:
                await _create(env, validate_only=validate_only, name="second", **case)  # type: ignore[arg-type]
            assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION, case
            message = exc.value.details() or ""
            assert "policy second (" in message and "policy first (" in message
            [(kind, _, _)] = precondition_violations(exc.value)
            assert kind == "TARGET_COLLISION"
    listed = await env.stub.ListPolicies(policy_pb2.ListPoliciesRequest())
    assert [p.name for p in listed.policies] == ["first"]


async def test_shared_destinations_from_the_same_source_are_allowed(env: PolicyEnv) -> None:  # noqa: F811
    # Two rules on one source into one target, a glob and an exact policy agreeing on the
    # mapping, another endpoint: none writes a different source into a shared destination.
    await _create(env, name="stable", source="team/app", rule='tag endswith "stable"',
                  target=Target(endpoint="qa", repository="qa/team/app"))
    await _create(env, name="release", source="team/app", rule='tag endswith "release"',
                  target=Target(endpoint="qa", repository="qa/team/app"))
    await _create(env, name="all", source="team/*",
                  target=Target(endpoint="qa", repository="qa/{repository}"))
    await _create(env, name="deep", source="team/**",
                  target=Target(endpoint="qa", repository="qa/{repository}"))
    await _create(env, name="to-dev", source=Source(endpoint="qa", repository="team/app"),
                  target=Target(endpoint="dev", repository="from-qa/team/app"))
    listed = await env.stub.ListPolicies(policy_pb2.ListPoliciesRequest())
    assert len(listed.policies) == 5


async def test_a_collision_made_by_an_update_is_refused(env: PolicyEnv) -> None:  # noqa: F811
    await _create(env, name="a", source="team/a", target=Target(endpoint="qa", repository="m/a"))
    b = await _create(env, name="b", source="team/b",
                      target=Target(endpoint="qa", repository="m/b"))
    with pytest.raises(grpc.RpcError) as exc:
        await env.stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(id=b.id, target=Target(repository="m/a")),
            update_mask={"paths": ["target.repository"]},  # type: ignore[arg-type]
        ))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "policy a (" in (exc.value.details() or "")
    got = await env.stub.GetPolicy(policy_pb2.GetPolicyRequest(id=b.id))
    assert got.target.repository == "m/b"


@pytest.mark.parametrize(
    "overwrite", [policy_pb2.OVERWRITE_ALWAYS, policy_pb2.OVERWRITE_NEVER,
                  policy_pb2.OVERWRITE_UNSPECIFIED],
)
async def test_overwrite_is_stored_returned_and_in_results(
    env: PolicyEnv, overwrite: int  # noqa: F811
) -> None:
    created = await _create(env, rule="true", overwrite=overwrite)
    assert created.overwrite == overwrite
    got = await env.stub.GetPolicy(policy_pb2.GetPolicyRequest(id=created.id))
    assert got.overwrite == overwrite
    [r] = await _results(env, "dev/website")
    assert r.matched and r.overwrite == overwrite


async def test_overwrite_is_updatable_and_checked(env: PolicyEnv) -> None:  # noqa: F811
    created = await _create(env, rule="true")
    updated = await env.stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
        policy=policy_pb2.Policy(id=created.id, overwrite=policy_pb2.OVERWRITE_NEVER),
        update_mask={"paths": ["overwrite"]},  # type: ignore[arg-type]
    ))
    assert updated.overwrite == policy_pb2.OVERWRITE_NEVER
    [r] = await _results(env, "dev/website")
    assert r.overwrite == policy_pb2.OVERWRITE_NEVER
    with pytest.raises(grpc.RpcError) as exc:
        await _create(env, name="odd", overwrite=7, source="dev/odd",
                      target=Target(endpoint="qa", repository="qa/odd"))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "policy.overwrite" in field_violations(exc.value)
