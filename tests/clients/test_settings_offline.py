"""The readings of the trigger and copy settings without a server: durations, trigger forms,
the YAML reader, `policy create` flags, the one enum spelling of Run.Action and DeletionMode,
and RetryInfo decoding."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import yaml
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from mirror import _build, enums, errors, policyfields
from mirror.cli import declarative, policydoc, protodata
from mirror.cli.context import CliError
from mirror.cli.declarative import policy_doc
from mirror.cli.main import build_parser
from mirror.v1 import common_pb2, gateway_pb2, policy_pb2


@pytest.mark.parametrize(("text", "us"), [
    ("30s", 30_000_000), ("10m", 600_000_000), ("1h30m", 5_400_000_000), ("500ms", 500_000),
    ("1.5s", 1_500_000), ("0s", 0), (45, 45_000_000), (0.25, 250_000),
    (dt.timedelta(minutes=2), 120_000_000),
])
def test_durations_read_and_print_back(text: object, us: int) -> None:
    d = policyfields.duration(text)  # type: ignore[arg-type]
    assert d.ToMicroseconds() == us
    assert policyfields.duration(policyfields.duration_text(d)).ToMicroseconds() == us


@pytest.mark.parametrize("bad", ["30", "soon", "10 m", "-5s", "", "1h-2m", True, -1])
def test_bad_durations_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        policyfields.duration(bad)  # type: ignore[arg-type]


def test_duration_text() -> None:
    for us, text in ((5_400_000_000, "1h30m"), (600_000_000, "10m"), (200_000, "200ms"),
                     (1_500_000, "1.5s"), (0, "0s"), (3_601_000_000, "1h1s")):
        d = duration_pb2.Duration()
        d.FromMicroseconds(us)
        assert policyfields.duration_text(d) == text


def test_trigger_forms() -> None:
    assert policyfields.trigger("push").WhichOneof("kind") == "push"
    assert policyfields.trigger({"manual": None}).WhichOneof("kind") == "manual"
    t = policyfields.trigger({"schedule": {"interval": "30s", "jitter": "5s"}})
    assert (t.schedule.interval.seconds, t.schedule.jitter.seconds, t.schedule.cron) == (
        30, 5, "")
    assert policyfields.trigger({"schedule": {"cron": "*/5 * * * *"}}).schedule.cron
    for bad, said in (("pull", "unknown trigger"), ({"schedule": {}}, "exactly one"),
                      ({"schedule": {"interval": "1s", "cron": "* * * * *"}}, "exactly one"),
                      ({"schedule": {"every": "1s"}}, "unknown ['every']"),
                      ({"push": {"x": 1}}, "takes no settings"), ({}, "one of")):
        with pytest.raises(ValueError) as err:
            policyfields.trigger(bad)  # type: ignore[arg-type]
        assert said in str(err.value), (bad, err.value)
    p = policy_pb2.Policy()
    assert (policyfields.trigger_kind(p), policyfields.trigger_text(p)) == ("push", "push")
    p.trigger.CopyFrom(t)
    assert policyfields.trigger_text(p) == "every 30s, jitter 5s"
    assert policyfields.trigger_doc(p) == {"schedule": {"interval": "30s", "jitter": "5s"}}


@pytest.mark.parametrize("trigger", [
    {"schedule": {"interval": "30s", "jitter": "5s"}}, {"schedule": {"cron": "*/5 * * * *"}},
    "manual", "push",
])
def test_json_output_reads_back_as_the_same_policy(trigger: object) -> None:
    p = policy_pb2.Policy(
        id="p1", name="pull", description="d", rule="true", tag_template="%n-x",
        time_zone="Europe/Berlin", enabled=False, etag="e1", disabled_reason="why",
        required_facts=[common_pb2.FACT_KIND_REFERENCE], overwrite=policy_pb2.OVERWRITE_NEVER,
        allow_incomplete_facts=True,
        trigger=policyfields.trigger(trigger),  # type: ignore[arg-type]
        platforms=["linux/amd64"], keep_newest=3, deletions=policy_pb2.DELETION_MODE_PROPAGATE,
        copy_referrers=["signatures"], signature_wait=policyfields.duration("10m"),
    )
    p.source.endpoint, p.source.repository = "dev", "team/**"
    p.target.endpoint, p.target.repository = "qa", "mirror/{path}"
    for ts in (p.create_time, p.update_time, p.active_since):
        ts.GetCurrentTime()
    printed = json.loads(json.dumps(protodata.message_data(p)))  # what -o json writes
    read, names = policydoc.read(printed, "stdin")
    settable = policy_pb2.Policy()
    settable.CopyFrom(p)
    for name in policydoc.OUTPUT_ONLY:
        settable.ClearField(name)  # type: ignore[arg-type]
    assert read == settable
    assert names == set(_build.POLICY_FIELDS)  # the output-only keys are not "given"
    # The same in an apply file (camelCase keys too), beside an endpoint's printed document.
    camel = {"keepNewest" if k == "keep_newest" else k: v for k, v in printed.items()}
    endpoint = {"name": "qa", "url": "http://qa", "has_secret": True,
                "has_webhook_secret": False, "create_time": "2024-01-01T00:00:00Z",
                "update_time": None, "aliases": []}
    desired = declarative.parse(json.dumps({"endpoints": [endpoint], "policies": [camel]}),
                                "stdin", Path("."))
    assert desired.policies[0].msg == settable
    assert not desired.endpoints[0].msg.has_secret
    assert desired.endpoints[0].fields == {"url", "aliases"}


def test_trigger_nulls_beside_the_chosen_one_are_ignored() -> None:
    manual = policyfields.trigger({"push": None, "schedule": None, "manual": {}})
    assert manual.WhichOneof("kind") == "manual"
    cron = policyfields.trigger(
        {"push": None, "schedule": {"interval": None, "cron": "0 3 * * *", "jitter": None},
         "manual": None})
    assert (cron.schedule.cron, cron.schedule.HasField("interval")) == ("0 3 * * *", False)
    assert policyfields.trigger({"push": None, "manual": None}).WhichOneof("kind") is None
    with pytest.raises(ValueError, match="one of"):
        policyfields.trigger({"push": {}, "manual": {}})
    with pytest.raises(CliError, match="has no field named \"kep_newest\""):
        policydoc.read({"name": "p", "etag": "e", "kep_newest": 3}, "p.yaml")  # typo refused


def test_yaml_reader_and_export_shape_round_trip() -> None:
    doc = yaml.safe_load("""
name: pull
source: {endpoint: hub, repository: library/nginx}
rule: tag semver ">=1.25 <2"
target: {endpoint: local, repository: mirror/nginx}
trigger: {schedule: {interval: 30s, jitter: 5s}}
platforms: linux/amd64
keepNewest: 3
deletions: dry-run
copyReferrers: [signatures, SBOMS]
signatureWait: 10m
""")
    msg, names = policydoc.read(doc, "p.yaml")
    assert {"trigger", "platforms", "keep_newest", "deletions", "copy_referrers",
            "signature_wait"} <= names
    assert (list(msg.platforms), msg.keep_newest, msg.deletions, list(msg.copy_referrers),
            msg.signature_wait.seconds) == (["linux/amd64"], 3, 3, ["signatures", "sboms"], 600)
    out = policy_doc(msg)
    assert (out["trigger"], out["deletions"], out["signatureWait"], out["keepNewest"]) == (
        {"schedule": {"interval": "30s", "jitter": "5s"}}, "dry_run", "10m", 3)
    again, _ = policydoc.read(out, "export")
    for f in ("trigger", "platforms", "keep_newest", "deletions", "copy_referrers",
              "signature_wait", "source", "target", "rule"):
        assert getattr(again, f) == getattr(msg, f), f
    for key, value, said in (("signatureWait", "soon", "signatureWait: 'soon'"),
                             ("copyReferrers", ["sigs"], "unknown referrer kind 'sigs'"),
                             ("platforms", [1], "expected a list of strings"),
                             ("deletions", "sometimes", "sometimes")):
        with pytest.raises(CliError) as err:
            policydoc.read({**doc, key: value}, "p.yaml")
        assert err.value.exit_code == 4 and said in err.value.message, err.value.message


def test_one_enum_spelling_for_actions_and_deletions() -> None:
    action = gateway_pb2.Run.Action.DESCRIPTOR
    assert enums.choices(action) == ["copy", "delete", "delete_dry_run"]
    assert enums.value_of(action, "delete-dry-run") == gateway_pb2.Run.ACTION_DELETE_DRY_RUN
    assert enums.value_of(action, "copy") == gateway_pb2.Run.ACTION_COPY
    mode = policy_pb2.DeletionMode.DESCRIPTOR
    assert enums.short_name(mode, 0) == "off"  # unspecified means off
    assert enums.value_of(mode, "DRY-RUN") == policy_pb2.DELETION_MODE_DRY_RUN
    with pytest.raises(ValueError, match="valid: off, propagate, dry_run"):
        enums.value_of(mode, "unspecified")
    run = protodata.message_data(gateway_pb2.Run(previous_digest="sha256:" + "a" * 64))
    assert (run["action"], run["cause"], run["poll_id"]) == ("copy", "", "")
    poll = protodata.message_data(gateway_pb2.Poll(tags_listed=5, requests=6))
    assert (poll["tags_listed"], poll["requests"], poll["end_time"]) == (5, 6, None)


def test_sdk_keywords_build_the_settings_and_mask() -> None:
    req = _build.update_policy("id1", "e1", {
        "trigger": {"schedule": {"cron": "0 3 * * *"}}, "platforms": [], "keep_newest": 0,
        "deletions": "propagate", "copy_referrers": "all", "signature_wait": "90s",
        "name": None,
    })
    assert list(req.update_mask.paths) == ["trigger", "platforms", "keep_newest", "deletions",
                                           "copy_referrers", "signature_wait"]
    p = req.policy
    assert (p.trigger.schedule.cron, list(p.copy_referrers), p.deletions,
            p.signature_wait.seconds) == ("0 3 * * *", ["all"], 2, 90)


def test_create_flags_parse_and_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    a = parser.parse_args(["policy", "create", "--name", "n", "--schedule", "30s",
                           "--jitter", "5s", "--platform", "linux/amd64", "--deletions",
                           "dry-run", "--copy-referrers", "signatures,sboms"])
    assert (a.schedule, a.jitter, a.platform, a.deletions) == (
        "30s", "5s", ["linux/amd64"], "dry_run")
    for argv in (["--schedule", "30s", "--cron", "* * * * *"], ["--manual", "--push"],
                 ["--schedule", "soon"], ["--deletions", "never"]):
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(["policy", "create", "--name", "n", *argv])
        assert exited.value.code == 2
    capsys.readouterr()
    # get is show; key commands exist
    assert parser.parse_args(["policy", "get", "p"]).func.__name__ == "show"
    assert parser.parse_args(["key", "show", "ci"]).func.__name__ == "get"


def test_retry_info_is_decoded_and_bounded() -> None:
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromMilliseconds(400)
    err = errors.ResourceExhausted("too many rule checks", details=[info])
    assert err.retry_delay == pytest.approx(0.4)
    assert errors.rate_limit_wait(err, 5.0) == pytest.approx(0.4)
    assert errors.rate_limit_wait(err, 0.3) is None  # longer than the budget left: raise
    assert errors.rate_limit_wait(err, 0.0) is None
    other = errors.ResourceExhausted("the rule took longer than 2 s")  # no RetryInfo
    assert other.retry_delay is None and errors.rate_limit_wait(other, 5.0) is None
    assert errors.rate_limit_wait(errors.Unavailable("down", details=[info]), 5.0) is None
