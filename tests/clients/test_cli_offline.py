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
