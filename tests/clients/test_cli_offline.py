"""mirrorctl parts that need no server: help on every command, completion, rendering."""

from __future__ import annotations

import argparse
import io
import subprocess
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from mirror.cli import rule_errors
from mirror.cli.declarative import parse
from mirror.cli.main import build_parser, main
from mirror.cli.parsing import image_ref
from mirror.cli.progress import follow
from mirror.v1 import transfer_pb2

ROOT = Path(__file__).resolve().parents[2]


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple]:
    out = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _commands(sub, (*path, name))
    return out


def test_every_command_has_examples_and_exit_codes_in_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths = _commands(build_parser())
    assert len(paths) > 30
    for path in paths:
        with pytest.raises(SystemExit) as done:
            main([*path, "--help"])
        assert done.value.code == 0
        text = capsys.readouterr().out
        assert "examples:" in text, path
        assert "4  invalid input or failed precondition" in text, path


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["policy", "create", "--no-such-flag"])
    assert done.value.code == 2
    assert main(["policy"]) == 2  # a group without its command prints help
    capsys.readouterr()


def test_secrets_are_never_arguments() -> None:
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["endpoint", "add", "qa", "--url", "http://x", "--secret", "pw"])


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_script_is_valid_shell(shell: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", shell]) == 0
    script = capsys.readouterr().out
    assert "complete -F _mirrorctl mirrorctl" in script
    checked = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert checked.returncode == 0, checked.stderr
    # Completing `mirrorctl policy cr` offers `create`.
    probe = script + '\nCOMP_WORDS=(mirrorctl policy cr); COMP_CWORD=2; _mirrorctl; ' \
        'echo "${COMPREPLY[@]}"\n'
    res = subprocess.run(["bash", "-c", probe], text=True, capture_output=True)
    assert res.stdout.split() == ["create"], res.stderr


def test_caret_under_the_error() -> None:
    text = rule_errors.render(
        'tag == "a" and\n\tcritcal_vulns < 3',
        [rule_errors.Positioned(2, 2, "unknown field", width=13)],
    )
    assert text.splitlines() == [
        "rule:2:2: unknown field",
        "  \tcritcal_vulns < 3",
        "  \t^" + "~" * 12,
    ]


def test_image_references() -> None:
    ref = image_ref("dev/team/app:1.4")
    assert (ref.endpoint, ref.repository, ref.reference) == ("dev", "team/app", "1.4")
    ref = image_ref("dev/team/app@sha256:" + "a" * 64)
    assert ref.reference == "sha256:" + "a" * 64
    assert image_ref("qa/team/app", need_reference=False).reference == ""
    with pytest.raises(Exception, match="ENDPOINT/REPOSITORY:TAG"):
        image_ref("team-app")


def test_plain_progress_lines_when_not_a_tty() -> None:
    T = transfer_pb2.Transfer
    snaps = [
        T(id="t1", state=T.STATE_WAITING),
        T(id="t1", state=T.STATE_RUNNING, bytes_total=2048, bytes_done=1024, blobs_total=2,
          blobs_done=1),
        T(id="t1", state=T.STATE_RUNNING, bytes_total=2048, bytes_done=1024, blobs_total=2,
          blobs_done=1),
        T(id="t1", state=T.STATE_DONE, bytes_total=2048, bytes_done=2048, blobs_total=2,
          blobs_done=2, digest="sha256:abc"),
    ]
    out = io.StringIO()
    with redirect_stdout(out):
        last = follow(iter(snaps), tty=False)
    assert last is snaps[-1]
    assert out.getvalue().splitlines() == [
        "t1 waiting 0 B/0 B blobs 0/0",
        "t1 running 1.0 KiB/2.0 KiB blobs 1/2",
        "t1 done 2.0 KiB/2.0 KiB blobs 2/2 sha256:abc",
    ]


def test_declarative_refuses_inline_secrets_and_unknown_fields(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="inline secrets are refused"):
        parse("endpoints:\n  - {name: qa, url: 'http://x', secret: hunter2}\n", "m.yaml",
              tmp_path)
    with pytest.raises(Exception, match="policies\\[0\\]"):
        parse("policies:\n  - {name: p, colour: red}\n", "m.yaml", tmp_path)
    with pytest.raises(Exception, match="secretFrom env NOPE_NOT_SET is unset"):
        parse("endpoints:\n  - {name: qa, url: 'http://x', secretFrom: {env: NOPE_NOT_SET}}\n",
              "m.yaml", tmp_path)
    (tmp_path / "pw").write_text("s3cret\n")
    desired = parse("endpoints:\n  - {name: qa, url: 'http://x', secretFrom: {file: pw}}\n",
                    "m.yaml", tmp_path)
    assert desired.endpoints[0].secret == "s3cret"
    assert desired.endpoints[0].fields == {"url"}


def test_sub_command_options_are_not_taken_for_abbreviated_globals() -> None:
    # `--to` once read as an abbreviation of --token/--token-file: transfer start failed.
    args = build_parser().parse_args(["transfer", "start", "dev/team/app:1.4", "--to",
                                      "qa/team/app", "-o", "yaml"])
    assert (args.source, args.destination, args.output) == ("dev/team/app:1.4", "qa/team/app",
                                                            "yaml")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--tok", "x", "status"])


def test_mounted_blobs_count_as_placed() -> None:
    T = transfer_pb2.Transfer
    done = T(id="t2", state=T.STATE_DONE, bytes_total=4096, bytes_skipped=4096, blobs_total=3,
             blobs_mounted=2, blobs_skipped=1, digest="sha256:def")
    out = io.StringIO()
    with redirect_stdout(out):
        follow(iter([done]), tty=False)
    assert out.getvalue().splitlines() == [
        "t2 done 4.0 KiB/4.0 KiB blobs 3/3 (1 already there, 2 mounted) sha256:def",
    ]


def test_json_output_has_every_field_numbers_and_one_enum_spelling() -> None:
    from mirror.cli.output import to_data
    from mirror.v1 import gateway_pb2, policy_pb2

    policy = to_data(policy_pb2.Policy(
        name="p", enabled=False, overwrite=policy_pb2.OVERWRITE_NEVER,
        source=policy_pb2.PolicySource(endpoint="dev", repository="team/**"),
    ))
    # Zero and false fields are there (`.enabled` is false, not missing); an unset message
    # or time is null; the deprecated source_repository is never shown.
    assert policy["enabled"] is False and policy["allow_incomplete_facts"] is False
    assert policy["description"] == "" and policy["required_facts"] == []
    assert policy["active_since"] is None and policy["target"] is None
    assert policy["overwrite"] == "never"
    assert to_data(policy_pb2.Policy())["overwrite"] == "always"  # unspecified means always
    assert policy["source"] == {"endpoint": "dev", "repository": "team/**"}
    assert "source_repository" not in policy
    transfer = to_data(transfer_pb2.Transfer(state=transfer_pb2.Transfer.STATE_SUPERSEDED,
                                             bytes_total=5_000_000_000))
    assert transfer["bytes_total"] == 5_000_000_000 and transfer["bytes_done"] == 0
    assert transfer["state"] == "superseded"
    run = to_data(gateway_pb2.Run(state=gateway_pb2.Run.STATE_BLOCKED,
                                  trigger=gateway_pb2.Run.TRIGGER_NOTIFY, hop=2))
    assert (run["state"], run["trigger"], run["hop"], run["provenance"]) == (
        "blocked", "notify", 2, [])
    endpoint = to_data(transfer_pb2.Endpoint(name="qa", has_secret=True))
    assert endpoint["has_secret"] is True and endpoint["has_webhook_secret"] is False
    assert "secret" not in endpoint and "webhook_secret" not in endpoint  # input only


def test_flags_take_the_spelling_the_output_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mirror import enums
    from mirror.v1 import gateway_pb2

    states = enums.choices(gateway_pb2.Run.State.DESCRIPTOR)
    assert states == ["pending", "running", "succeeded", "failed", "not_matched", "blocked",
                      "skipped"]
    args = build_parser().parse_args(["runs", "list", "--state", "blocked", "--state",
                                      "skipped"])
    assert args.state == ["blocked", "skipped"]
    args = build_parser().parse_args(["transfer", "list", "--state", "superseded"])
    assert args.state == ["superseded"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["runs", "list", "--state", "STATE_FAILED"])
    capsys.readouterr()
    assert enums.value_of(gateway_pb2.Run.State.DESCRIPTOR, "STATE_FAILED") == 4
    with pytest.raises(ValueError, match="valid: pending, running"):
        enums.value_of(gateway_pb2.Run.State.DESCRIPTOR, "unspecified")


def test_policy_yaml_new_shape_and_the_old_one_refused(tmp_path: Path) -> None:
    from mirror.cli import policydoc
    from mirror.cli.context import CliError
    from mirror.v1 import policy_pb2

    msg, given = policydoc.read({
        "name": "p", "source": {"endpoint": "dev", "repository": "team/**"},
        "target": {"endpoint": "qa", "repository": "mirror/{path}"}, "rule": "true",
        "overwrite": "never", "allowIncompleteFacts": True,
    }, "policy.yaml")
    assert (msg.source.endpoint, msg.source.repository) == ("dev", "team/**")
    assert msg.target.repository == "mirror/{path}"
    assert msg.overwrite == policy_pb2.OVERWRITE_NEVER and msg.allow_incomplete_facts
    assert given == {"name", "source", "target", "rule", "overwrite", "allow_incomplete_facts"}
    with pytest.raises(CliError) as old:
        policydoc.read({"name": "p", "sourceRepository": "team/website", "rule": "true"},
                       "policy.yaml")
    assert old.value.exit_code == 4
    assert "sourceRepository was replaced by source: {endpoint, repository}" in old.value.message
    assert "source: {endpoint: ENDPOINT, repository: team/website}" in old.value.hint
    with pytest.raises(CliError, match="unknown overwrite 'sometimes'; valid: always, never"):
        policydoc.read({"name": "p", "overwrite": "sometimes"}, "policy.yaml")
    # The same in a mirror.yaml for `apply -f`, naming the entry.
    with pytest.raises(CliError, match=r"m.yaml: policies\[0\]: source_repository was "
                                       r"replaced by source"):
        parse("policies:\n  - {name: p, source_repository: team/x, rule: 'true'}\n",
              "m.yaml", tmp_path)


def test_webhook_secrets_in_files_are_references(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="inline secrets are refused; use webhookSecretFrom"):
        parse("endpoints:\n  - {name: qa, url: 'http://x', webhookSecret: hunter2}\n",
              "m.yaml", tmp_path)
    (tmp_path / "hook").write_text("hook-token\n")
    desired = parse("endpoints:\n  - {name: qa, url: 'http://x', "
                    "webhookSecretFrom: {file: hook}}\n", "m.yaml", tmp_path)
    assert desired.endpoints[0].webhook_secret == "hook-token"
    assert desired.endpoints[0].secret is None


def test_pinned_and_digest_references() -> None:
    from mirror.cli.context import CliError
    from mirror.cli.parsing import location

    digest = "sha256:" + "b" * 64
    pinned = image_ref(f"dev/team/app:1.4@{digest}")
    assert (pinned.tag, pinned.digest, pinned.reference) == ("1.4", digest, digest)
    assert str(pinned) == f"dev/team/app:1.4@{digest}"
    assert str(image_ref(f"dev/team/app@{digest}")) == f"dev/team/app@{digest}"
    with pytest.raises(CliError, match="is not sha256: and 64 lowercase hex digits"):
        image_ref("dev/team/app@sha256:abc")
    with pytest.raises(CliError, match="a digest cannot be a destination"):
        image_ref(f"qa/team/app@{digest}", need_reference=False, digest_ok=False)
    assert location("dev/team/**", what="--source").repository == "team/**"
    with pytest.raises(CliError, match="names a tag or digest"):
        location("dev/team/app:1.0", what="--source")


def test_sdk_requires_the_source_endpoint_and_spells_overwrite() -> None:
    from mirror import _build
    from mirror.v1 import policy_pb2

    with pytest.raises(ValueError, match="source_endpoint= is required"):
        _build.create_policy(None, {"name": "p", "source_repository": "team/app"}, False)
    req = _build.create_policy(None, {"name": "p", "source_endpoint": "dev",
                                      "source_repository": "team/app", "overwrite": "never"},
                               False)
    assert req.policy.source.endpoint == "dev" and req.policy.source.repository == "team/app"
    assert req.policy.overwrite == policy_pb2.OVERWRITE_NEVER and req.policy.enabled
    assert not req.policy.source_repository  # the deprecated field stays empty
    upd = _build.update_policy("id1", "", {"source_endpoint": "qa", "overwrite": "always",
                                           "allow_incomplete_facts": True, "rule": None})
    assert list(upd.update_mask.paths) == ["source.endpoint", "overwrite",
                                           "allow_incomplete_facts"]


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib import metadata

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"mirrorctl {metadata.version('image-mirror')}"
