"""Fail closed: missing or stale vulnerability data, unrecognised packages and facts not
gathered block the policy (blocked=True, matched=False, the reason); allow_incomplete_facts
opts out. The age limit is a constructor option and `--max-vulnerability-age`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf import timestamp_pb2
from grpc import aio
from mirror.v1 import common_pb2, policy_pb2, policy_pb2_grpc

from policy_service.freshness import parse_age
from tests.policy.policy_servicer_support import (  # noqa: F401  (fixtures)
    REPO_ROOT,
    PolicyEnv,
    TransferDouble,
    policy,
    serving,
    start_policy_process,
    transfer_double,
)

K = common_pb2
UNKNOWN = "no package database was recognised in the image: its components are unknown"


def _ago(**delta: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(datetime.now(UTC) - timedelta(**delta))
    return ts


@pytest.fixture
async def env(
    tmp_path: Path, transfer_double: tuple[TransferDouble, int]  # noqa: F811
) -> AsyncIterator[PolicyEnv]:
    async with serving(tmp_path, transfer_double) as e:
        for name, rule, extra in [
            ("vulns", "critical_vulns == 0", {}),
            ("components", 'component != "bash"', {}),
            ("licenses", 'license not in ["GPL-3.0-only"]', {}),
            ("tag", 'tag == "1.0"', {}),
            ("open-vulns", "critical_vulns == 0", {"allow_incomplete_facts": True}),
        ]:
            await e.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy(
                name=name, rule=rule, source=f"team/{name}",
                target=common_pb2.Target(endpoint="qa", repository=f"qa/{name}"), **extra,
            )))
        yield e


async def _result(
    env: PolicyEnv, name: str, **facts: object
) -> policy_pb2.PolicyResult:
    [r] = (await env.stub.Evaluate(policy_pb2.EvaluateRequest(
        endpoint="dev", explain=True,
        facts=common_pb2.ImageFacts(repository=f"team/{name}", tag="1.0", **facts),  # type: ignore[arg-type]
    ))).results
    return r


def _blocked(r: policy_pb2.PolicyResult) -> tuple[bool, bool, str]:
    return r.blocked, r.matched, r.reason


async def test_empty_vulnerability_database_blocks(env: PolicyEnv) -> None:
    r = await _result(env, "vulns")  # zero vulnerabilities, no data time
    assert _blocked(r) == (True, False, "no vulnerability data")
    assert r.tag == "" and r.target.repository == "qa/vulns"
    # Rules that do not read vulnerabilities are not concerned.
    assert (await _result(env, "tag")).matched
    assert (await _result(env, "components")).matched


async def test_stale_vulnerability_data_blocks_with_its_age(env: PolicyEnv) -> None:
    r = await _result(env, "vulns", vulnerability_data_time=_ago(days=12, hours=3))
    assert _blocked(r) == (True, False, "vulnerability data is 12 days old (limit 7 days)")
    fresh = await _result(env, "vulns", vulnerability_data_time=_ago(days=6, hours=23))
    assert (fresh.blocked, fresh.matched) == (False, True)
    # A future time (clock skew) counts as fresh, not as negative age.
    skew = await _result(env, "vulns", vulnerability_data_time=_ago(minutes=-5))
    assert skew.matched


async def test_unrecognised_packages_block_component_license_and_vulnerability_rules(
    env: PolicyEnv,
) -> None:
    fresh = _ago(hours=1)
    for name in ("components", "licenses", "vulns"):
        r = await _result(env, name, components_unknown=True, vulnerability_data_time=fresh)
        assert _blocked(r) == (True, False, UNKNOWN), name
    assert (await _result(env, "tag", components_unknown=True)).matched
    both = await _result(env, "vulns", components_unknown=True)
    assert both.reason == f"{UNKNOWN}; no vulnerability data"


async def test_facts_not_gathered_block_and_name_them(env: PolicyEnv) -> None:
    r = await _result(env, "licenses", present=[K.FACT_KIND_REFERENCE, K.FACT_KIND_MANIFEST])
    assert _blocked(r) == (True, False, "needs license facts, which were not provided")
    assert list(r.explanation.missing_facts) == [K.FACT_KIND_LICENSES]
    assert list(r.explanation.clauses) == []  # never evaluated on absent facts


async def test_allow_incomplete_facts_evaluates_as_before(env: PolicyEnv) -> None:
    r = await _result(env, "open-vulns")  # no vulnerability data: zero counts
    assert (r.blocked, r.matched) == (False, True)
    stale = await _result(env, "open-vulns", vulnerability_data_time=_ago(days=30),
                          components_unknown=True)
    assert (stale.blocked, stale.matched) == (False, True)
    missing = await _result(env, "open-vulns", present=[K.FACT_KIND_REFERENCE])
    assert (missing.blocked, missing.matched) == (False, False)
    assert missing.reason == "needs vulnerability facts, which were not provided"


async def test_allow_incomplete_facts_is_stored_and_updatable(env: PolicyEnv) -> None:
    listed = await env.stub.ListPolicies(policy_pb2.ListPoliciesRequest())
    flags = {p.name: p.allow_incomplete_facts for p in listed.policies}
    assert flags == {"components": False, "licenses": False, "open-vulns": True,
                     "tag": False, "vulns": False}
    vulns = next(p for p in listed.policies if p.name == "vulns")
    await env.stub.UpdatePolicy(policy_pb2.UpdatePolicyRequest(
        policy=policy_pb2.Policy(id=vulns.id, allow_incomplete_facts=True),
        update_mask={"paths": ["allow_incomplete_facts"]},  # type: ignore[arg-type]
    ))
    assert (await _result(env, "vulns")).matched


async def test_the_age_limit_is_configurable(
    tmp_path: Path, transfer_double: tuple[TransferDouble, int]  # noqa: F811
) -> None:
    async with serving(tmp_path, transfer_double, max_vulnerability_age=timedelta(hours=12)) as e:
        await e.stub.CreatePolicy(policy_pb2.CreatePolicyRequest(
            policy=policy(rule="critical_vulns == 0")
        ))

        async def reason(**age: float) -> str:
            [r] = (await e.stub.Evaluate(policy_pb2.EvaluateRequest(
                endpoint="dev", facts=common_pb2.ImageFacts(
                    repository="dev/website", tag="1", vulnerability_data_time=_ago(**age)
                ),
            ))).results
            return r.reason

        assert await reason(hours=11) == ""
        assert await reason(hours=13) == "vulnerability data is 13 hours old (limit 12 hours)"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("7d", 7 * 86400), ("12h", 12 * 3600), ("30m", 1800), ("90s", 90), ("1.5d", 129600),
     ("3600", 3600)],
)
def test_ages_parse(text: str, seconds: float) -> None:
    assert parse_age(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "7w", "-1d", "0h", "d7"])
def test_bad_ages_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="age"):
        parse_age(text)


async def test_max_vulnerability_age_flag(tmp_path: Path) -> None:
    p = start_policy_process(tmp_path, "--max-vulnerability-age", "12h")
    try:
        async with aio.insecure_channel(p.address) as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            await stub.CreatePolicy(policy_pb2.CreatePolicyRequest(
                policy=policy(rule="critical_vulns == 0")
            ), timeout=10)
            [r] = (await stub.Evaluate(policy_pb2.EvaluateRequest(
                endpoint="dev", facts=common_pb2.ImageFacts(
                    repository="dev/website", tag="1", vulnerability_data_time=_ago(days=2)
                ),
            ), timeout=10)).results
            assert _blocked(r) == (
                True, False, "vulnerability data is 48 hours old (limit 12 hours)"
            )
    finally:
        p.stop()


def test_bad_max_vulnerability_age_flag_is_a_usage_error(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "policy_service", "--grpc-listen", "127.0.0.1:0",
         "--data", str(tmp_path), "--max-vulnerability-age", "soon"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    assert "--max-vulnerability-age" in out.stderr and "'soon' is not an age" in out.stderr


async def test_default_limit_is_seven_days(tmp_path: Path) -> None:
    p = start_policy_process(tmp_path)
    try:
        async with aio.insecure_channel(p.address) as channel:
            stub = policy_pb2_grpc.PolicyServiceStub(channel)
            await stub.CreatePolicy(policy_pb2.CreatePolicyRequest(
                policy=policy(rule="critical_vulns == 0")
            ), timeout=10)
            results = await asyncio.gather(*(
                stub.Evaluate(policy_pb2.EvaluateRequest(
                    endpoint="dev", facts=common_pb2.ImageFacts(
                        repository="dev/website", tag="1", vulnerability_data_time=_ago(**age)
                    ),
                ), timeout=10)
                for age in ({"days": 6}, {"days": 8})
            ))
            assert [r.results[0].blocked for r in results] == [False, True]
            assert results[1].results[0].reason == (
                "vulnerability data is 8 days old (limit 7 days)"
            )
    finally:
        p.stop()
