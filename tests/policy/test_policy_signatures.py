"""`signed` / `signed_by` policies over a real grpc.aio server: the service verifies the
signatures the caller found against its trusted keys before the rule runs, says which key
verified or why none did, asks to wait only for a signature that has not arrived, refuses
rules naming unknown keys and keeps keys that rules name."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2, field_mask_pb2
from mirror.v1 import common_pb2, policy_pb2

from tests.policy.policy_servicer_support import (  # noqa: F401  (fixtures)
    PolicyEnv,
    env,
    policy,
    precondition_violations,
    serving,
    transfer_double,
)
from tests.policy.signing import (
    DIGEST,
    OTHER_DIGEST,
    PrivateKey,
    new_key,
    public_pem,
    signature_fact,
)

SIG = common_pb2.FACT_KIND_SIGNATURES
REF = common_pb2.FACT_KIND_REFERENCE


async def trust(env: PolicyEnv, name: str, key: PrivateKey) -> None:  # noqa: F811
    await env.stub.CreateTrustedKey(policy_pb2.CreateTrustedKeyRequest(
        key=policy_pb2.TrustedKey(name=name, public_key_pem=public_pem(key))))


async def make(env: PolicyEnv, rule: str, wait_s: int = 0, **kw: object) -> policy_pb2.Policy:  # noqa: F811
    return await env.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy(
        rule=rule, signature_wait=duration_pb2.Duration(seconds=wait_s), **kw)))


async def evaluate(
    env: PolicyEnv, *sigs: common_pb2.SignatureFact, tag: str = "1.0",  # noqa: F811
    present: tuple[int, ...] = (REF, SIG),
) -> policy_pb2.PolicyResult:
    resp = await env.stub.Evaluate(policy_pb2.EvaluateRequest(
        endpoint="dev", explain=True,
        facts=common_pb2.ImageFacts(
            repository="dev/website", tag=tag, digest=DIGEST, signatures=list(sigs),
            present=list(present),  # type: ignore[arg-type]
        ),
    ))
    [result] = resp.results
    return result


def said(r: policy_pb2.PolicyResult) -> str:
    """Everything the result says: reason and each clause with its value."""
    return " | ".join([r.reason, *(f"{c.clause} = {c.value}" for c in r.explanation.clauses)])


@pytest.mark.parametrize("kind", ["ecdsa", "ed25519"])
async def test_signed_by_matches_a_signature_of_that_key_and_says_so(
    env: PolicyEnv, kind: str  # noqa: F811
) -> None:
    ci = new_key(kind)
    await trust(env, "ci", ci)
    await trust(env, "other", new_key())
    p = await make(env, 'signed_by "ci"')
    assert SIG in p.required_facts
    r = await evaluate(env, signature_fact(ci))
    assert r.matched and not r.HasField("wait_for_signature")
    assert "ci" in said(r)


async def test_another_key_is_refused_at_once_saying_why(env: PolicyEnv) -> None:  # noqa: F811
    await trust(env, "ci", new_key())
    await make(env, 'signed_by "ci"', wait_s=600)
    r = await evaluate(env, signature_fact(new_key("ed25519")))
    assert not r.matched and not r.blocked
    assert not r.HasField("wait_for_signature")  # a signature is there: decide now
    assert "'ci'" in r.reason and "signed by another key" in r.reason


async def test_a_trusted_key_that_is_not_the_named_one_does_not_count(env: PolicyEnv) -> None:  # noqa: F811
    other = new_key()
    await trust(env, "ci", new_key())
    await trust(env, "other", other)
    await make(env, 'signed_by "ci"')
    r = await evaluate(env, signature_fact(other))
    assert not r.matched and "verified by other" in r.reason and "'ci'" in r.reason


async def test_a_signature_of_another_digest_is_refused(env: PolicyEnv) -> None:  # noqa: F811
    ci = new_key()
    await trust(env, "ci", ci)
    await make(env, 'signed_by "ci"', wait_s=600)
    r = await evaluate(env, signature_fact(ci, OTHER_DIGEST))
    assert not r.matched and not r.HasField("wait_for_signature")
    assert "the payload names another digest" in r.reason


async def test_the_callers_verified_by_is_not_believed(env: PolicyEnv) -> None:  # noqa: F811
    await trust(env, "ci", new_key())
    await make(env, 'signed_by "ci"')
    forged = signature_fact(new_key(), verified_by=["ci"])
    r = await evaluate(env, forged)
    assert not r.matched and "signed by another key" in r.reason


async def test_signed_accepts_any_trusted_key(env: PolicyEnv) -> None:  # noqa: F811
    rel = new_key("ed25519")
    await trust(env, "release", rel)
    await make(env, "signed")
    assert (await evaluate(env, signature_fact(rel))).matched
    r = await evaluate(env, signature_fact(new_key()))
    assert not r.matched and "any trusted key" in r.reason


async def test_no_signature_waits_when_the_policy_says_so(env: PolicyEnv) -> None:  # noqa: F811
    await trust(env, "ci", new_key())
    await make(env, 'signed_by "ci"', wait_s=120)
    r = await evaluate(env)
    assert not r.matched and r.wait_for_signature == duration_pb2.Duration(seconds=120)
    assert "no signature found" in r.reason


async def test_no_signature_and_no_wait_is_decided_now(env: PolicyEnv) -> None:  # noqa: F811
    await trust(env, "ci", new_key())
    await make(env, 'signed_by "ci"')
    r = await evaluate(env)
    assert not r.matched and not r.HasField("wait_for_signature")
    assert "no signature found" in r.reason


async def test_no_wait_when_a_signature_could_not_make_it_match(env: PolicyEnv) -> None:  # noqa: F811
    await trust(env, "ci", new_key())
    await make(env, 'tag == "stable" and signed_by "ci"', wait_s=120)
    assert not (await evaluate(env, tag="dev")).HasField("wait_for_signature")
    assert (await evaluate(env, tag="stable")).HasField("wait_for_signature")


async def test_the_service_default_wait_applies_to_policies_without_one(
    tmp_path: Path, transfer_double: tuple[object, int]  # noqa: F811
) -> None:
    async with serving(
        tmp_path, transfer_double, signature_wait=timedelta(minutes=5)  # type: ignore[arg-type]
    ) as e:
        await trust(e, "ci", new_key())
        await make(e, 'signed_by "ci"')
        r = await evaluate(e)
        assert r.wait_for_signature == duration_pb2.Duration(seconds=300)


async def test_signatures_not_looked_for_are_blocked_not_waited_for(env: PolicyEnv) -> None:  # noqa: F811
    await trust(env, "ci", new_key())
    await make(env, 'signed_by "ci"', wait_s=120)
    r = await evaluate(env, present=(REF,))
    assert r.blocked and not r.matched and not r.HasField("wait_for_signature")


async def test_fact_requirements_name_signatures(env: PolicyEnv) -> None:  # noqa: F811
    await trust(env, "ci", new_key())
    await make(env, 'signed_by "ci"')
    req = await env.stub.GetFactRequirements(policy_pb2.GetFactRequirementsRequest(
        endpoint="dev", repository="dev/website"))
    assert SIG in req.kinds
    ok = await env.stub.ValidateRule(policy_pb2.ValidateRuleRequest(rule="signed"))
    assert ok.valid and SIG in ok.required_facts


async def test_a_rule_naming_an_unknown_key_is_refused_at_save(env: PolicyEnv) -> None:  # noqa: F811
    for validate_only in (True, False):
        with pytest.raises(grpc.RpcError) as info:
            await env.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(
                policy=policy(rule='signed_by "nobody"'), validate_only=validate_only))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "'nobody'" in (info.value.details() or "")
    [(kind, subject, _)] = precondition_violations(info.value)
    assert (kind, subject) == ("TRUSTED_KEY_MISSING", "policy.rule")
    await trust(env, "ci", new_key())
    p = await make(env, 'signed_by "ci"')
    with pytest.raises(grpc.RpcError) as info:
        await env.stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
            policy=policy_pb2.Policy(id=p.id, rule='signed_by "ci" or signed_by "gone"'),
            update_mask=field_mask_pb2.FieldMask(paths=["rule"])))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "'gone'" in (info.value.details() or "") and "'ci'" not in (info.value.details() or "")


async def test_a_key_a_rule_names_cannot_be_deleted(env: PolicyEnv) -> None:  # noqa: F811
    await trust(env, "ci", new_key())
    await trust(env, "spare", new_key())
    p = await make(env, 'signed_by "ci"')
    with pytest.raises(grpc.RpcError) as info:
        await env.stub.DeleteTrustedKey(policy_pb2.DeleteTrustedKeyRequest(name="ci"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "promote-website" in (info.value.details() or "")
    await env.stub.DeleteTrustedKey(policy_pb2.DeleteTrustedKeyRequest(name="spare"))
    await env.stub.GetTrustedKey(policy_pb2.GetTrustedKeyRequest(name="ci"))  # still there
    await env.stub.DeletePolicy(policy_pb2.DeletePolicyRequest(id=p.id))
    await env.stub.DeleteTrustedKey(policy_pb2.DeleteTrustedKeyRequest(name="ci"))


async def test_many_keys_and_signatures_are_verified_off_the_loop(env: PolicyEnv) -> None:  # noqa: F811
    """More checks than INLINE_VERIFICATIONS go to a thread, with the same verdicts."""
    keys = [new_key("ed25519") for _ in range(5)]
    for i, k in enumerate(keys):
        await trust(env, f"k{i}", k)
    await make(env, 'signed_by "k4"')
    stranger = signature_fact(new_key(), manifest_digest="sha256:" + "0" * 64)
    r = await evaluate(env, stranger, signature_fact(keys[4]))
    assert r.matched
    r = await evaluate(env, stranger, signature_fact(keys[1]))
    assert not r.matched and "verified by k1" in r.reason
