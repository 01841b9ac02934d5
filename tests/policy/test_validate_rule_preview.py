"""ValidateRule's tag preview over real gRPC: `example_tag` renders the tag template now in
the request's time zone (`tag_preview`); nothing is previewed when the template, the zone or
the rendered tag is wrong, and those say why. The SDK's `validate_rule(example_tag=...)`
(blocking and asyncio) against `python -m policy_service`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from mirror import aio as mirror_aio
from mirror.client import connect
from mirror.v1 import policy_pb2

from tests.policy.policy_servicer_support import (  # noqa: F401  (fixtures)
    PolicyEnv,
    PolicyProcess,
    env,
    start_policy_process,
    transfer_double,
)

# A zone 5 h 45 min from UTC all year: its minutes differ from UTC's, so a preview rendered
# in UTC (or any whole-hour zone) cannot pass for it.
KATHMANDU = "Asia/Kathmandu"


async def _previewed(
    env: PolicyEnv, render: Callable[[datetime], str], **request: str  # noqa: F811
) -> policy_pb2.ValidateRuleResponse:
    """ValidateRule's answer, checked to preview what `render` makes of the clock at some
    moment during the call (the clock is read before and after it)."""
    before = datetime.now(UTC)
    resp = await env.stub.ValidateRule(policy_pb2.ValidateRuleRequest(rule="true", **request))
    after = datetime.now(UTC)
    assert resp.tag_preview in {render(before), render(after)}, resp
    return resp


async def test_the_preview_is_the_template_rendered_now_for_the_example_tag(
    env: PolicyEnv,  # noqa: F811
) -> None:
    resp = await _previewed(
        env, lambda t: f"{t:%Y%m%d-%H%M}-1.4-stable",
        tag_template="%Y%m%d-%H%M-%n", example_tag="1.4-stable",
    )
    assert resp.valid and not resp.template_errors


async def test_the_preview_is_rendered_in_the_time_zone(env: PolicyEnv) -> None:  # noqa: F811
    zone = ZoneInfo(KATHMANDU)
    resp = await _previewed(
        env, lambda t: f"{t.astimezone(zone):%H%M}-2.0",
        tag_template="%H%M-%n", time_zone=KATHMANDU, example_tag="2.0",
    )
    assert resp.valid


async def test_no_template_keeps_the_example_tag(env: PolicyEnv) -> None:  # noqa: F811
    resp = await env.stub.ValidateRule(policy_pb2.ValidateRuleRequest(
        rule="true", example_tag="1.4-stable"))
    assert (resp.valid, resp.tag_preview) == (True, "1.4-stable")


async def test_no_example_tag_no_preview(env: PolicyEnv) -> None:  # noqa: F811
    resp = await env.stub.ValidateRule(policy_pb2.ValidateRuleRequest(
        rule="true", tag_template="%Y-%n"))
    assert (resp.valid, resp.tag_preview, list(resp.template_errors)) == (True, "", [])


@pytest.mark.parametrize(("template", "zone", "example", "error_start"), [
    # Templates that can never make a tag: refused at compile time, no preview.
    ("%Y%%", "", "1.4-stable", "tag_template: "),
    ("%n-%q", "", "1.4-stable", "tag_template: "),
    ("%Y-%n", "Mars/Olympus", "1.4-stable", "time_zone: unknown time zone"),
    # A template fine in general, but the tag it makes of this example is not a valid tag.
    ("%n", "", "not a tag!", "example_tag: template '%n' rendered 'not a tag!'"),
])
async def test_a_template_or_zone_with_errors_previews_nothing(
    env: PolicyEnv, template: str, zone: str, example: str, error_start: str,  # noqa: F811
) -> None:
    resp = await env.stub.ValidateRule(policy_pb2.ValidateRuleRequest(
        rule="true", tag_template=template, time_zone=zone, example_tag=example))
    assert not resp.valid and resp.tag_preview == ""
    assert [e for e in resp.template_errors if e.startswith(error_start)], resp.template_errors


async def test_a_bad_rule_does_not_hide_the_preview(env: PolicyEnv) -> None:  # noqa: F811
    resp = await env.stub.ValidateRule(policy_pb2.ValidateRuleRequest(
        rule="tag ==", tag_template="copy-%n", example_tag="1.0"))
    assert not resp.valid and resp.errors and not resp.template_errors
    assert resp.tag_preview == "copy-1.0"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[PolicyProcess]:
    """`python -m policy_service` on a free port, as the SDK reaches it in a deployment."""
    p = start_policy_process(tmp_path)
    yield p
    p.stop()


def test_the_blocking_sdk_passes_example_tag(served: PolicyProcess) -> None:
    with connect(served.address) as client:
        resp = client.policies.validate_rule("true", tag_template="v-%n", example_tag="3.1")
        empty = client.policies.validate_rule("true", tag_template="v-%n")
    assert (resp.valid, resp.tag_preview) == (True, "v-3.1")
    assert empty.tag_preview == ""


async def test_the_asyncio_sdk_passes_example_tag(served: PolicyProcess) -> None:
    async with mirror_aio.connect(served.address) as client:
        before = datetime.now(UTC)
        resp = await client.policies.validate_rule(
            "true", tag_template="%Y-%n", time_zone="UTC", example_tag="3.1")
        after = datetime.now(UTC)
    assert resp.valid
    assert resp.tag_preview in {f"{before.year}-3.1", f"{after.year}-3.1"}
