"""TestConnection: check an endpoint step by step (reachable, TLS, auth, pull, push).

Each step has its own result; once a step fails the later ones are SKIPPED. The push check
opens an upload session and cancels it at once, so nothing is left in the registry.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from registry_client import RegistryClient, RegistryConfig
from registry_client import errors as rerr
from registry_client.excerpt import excerpt

# Longest remote-derived text in one check's message.
MESSAGE_CHARS = 300


class Step(enum.IntEnum):
    # Values mirror mirror.v1.ConnectionCheck.Step.
    REACHABLE = 1
    TLS_VERIFIED = 2
    AUTHENTICATED = 3
    PULL_ALLOWED = 4
    PUSH_ALLOWED = 5


class Result(enum.IntEnum):
    # Values mirror mirror.v1.ConnectionCheck.Result.
    OK = 1
    FAILED = 2
    SKIPPED = 3


@dataclass(frozen=True)
class StepResult:
    step: Step
    result: Result
    message: str


@dataclass(frozen=True)
class ConnectionReport:
    checks: list[StepResult]

    @property
    def ok(self) -> bool:
        """True when no step failed (skipped steps, e.g. TLS on plain HTTP, do not count)."""
        return all(c.result != Result.FAILED for c in self.checks)


Recorder = Callable[[Step, Result, str], None]

# A registry that answers nothing at all within this time counts as unreachable.
PING_TIMEOUT = 20.0


async def check_connection(
    cfg: RegistryConfig,
    repository: str,
    check_push: bool,
    on_step: Callable[[StepResult], None] | None = None,
) -> ConnectionReport:
    """Run the steps against the registry described by `cfg`; `on_step` hears each result as
    soon as it is known (the skipped ones are only in the report)."""
    steps = [Step.REACHABLE, Step.TLS_VERIFIED, Step.AUTHENTICATED, Step.PULL_ALLOWED]
    if check_push:
        steps.append(Step.PUSH_ALLOWED)
    done: dict[Step, StepResult] = {}

    def record(step: Step, result: Result, message: str) -> None:
        done[step] = StepResult(step, result, message)
        if on_step is not None:
            on_step(done[step])

    def report() -> ConnectionReport:
        after_failure = False
        out: list[StepResult] = []
        for s in steps:
            r = done.get(s)
            if r is None:
                why = "an earlier step failed" if after_failure else "not checked"
                r = StepResult(s, Result.SKIPPED, f"skipped: {why}")
            after_failure = after_failure or r.result == Result.FAILED
            out.append(r)
        return ConnectionReport(out)

    # Answer within seconds: a connection test should report, not retry for a minute.
    cfg = replace(cfg, max_attempts=2, connect_timeout=min(cfg.connect_timeout, 10.0))
    # base_url: the URL without any userinfo, which must never appear in a step's message.
    parts = urlsplit(cfg.base_url)
    hostport = parts.netloc
    https = parts.scheme == "https"
    async with RegistryClient(cfg) as rc:
        try:
            await asyncio.wait_for(rc.ping(), PING_TIMEOUT)
        except (TimeoutError, rerr.ConnectError, OSError) as exc:
            record(Step.REACHABLE, Result.FAILED, f"cannot reach {hostport}: {_text(exc)}")
            return report()
        except rerr.TlsError as exc:
            record(Step.REACHABLE, Result.OK, f"{hostport} accepts connections")
            record(Step.TLS_VERIFIED, Result.FAILED, _tls_message(exc, cfg))
            return report()
        except rerr.AuthenticationError as exc:
            _record_transport_ok(record, hostport, https, cfg)
            record(Step.AUTHENTICATED, Result.FAILED, _auth_message(exc, cfg))
            return report()
        except rerr.PermissionDenied as exc:
            _record_transport_ok(record, hostport, https, cfg)
            record(Step.AUTHENTICATED, Result.FAILED, f"access denied: {_text(exc)}")
            return report()
        except rerr.RegistryError as exc:
            record(
                Step.REACHABLE,
                Result.FAILED,
                f"{hostport} does not answer the registry API at /v2/: {_text(exc)}",
            )
            return report()
        _record_transport_ok(record, hostport, https, cfg)
        record(
            Step.AUTHENTICATED,
            Result.OK,
            f"credentials of {cfg.username!r} accepted" if cfg.username else "anonymous access",
        )

        try:
            await rc.list_tags(repository)
            record(Step.PULL_ALLOWED, Result.OK, f"can list the tags of {repository!r}")
        except rerr.NotFound:
            # A repository that does not exist yet (NAME_UNKNOWN) is fine for a destination.
            record(
                Step.PULL_ALLOWED,
                Result.OK,
                f"{repository!r} does not exist yet (NAME_UNKNOWN); reading is allowed",
            )
        except (rerr.PermissionDenied, rerr.AuthenticationError) as exc:
            record(
                Step.PULL_ALLOWED,
                Result.FAILED,
                f"account cannot read {repository!r}: {_text(exc)}",
            )
            return report()
        except rerr.RegistryError as exc:
            record(Step.PULL_ALLOWED, Result.FAILED, f"listing tags failed: {_text(exc)}")
            return report()

        if check_push:
            record(*await _check_push(rc, repository))
    return report()


async def _check_push(rc: RegistryClient, repository: str) -> tuple[Step, Result, str]:
    try:
        upload = await rc.start_upload(repository)
    except (rerr.PermissionDenied, rerr.AuthenticationError) as exc:
        return (
            Step.PUSH_ALLOWED,
            Result.FAILED,
            f"account can read but not push to {repository!r}: {_text(exc)}",
        )
    except rerr.RegistryError as exc:
        return Step.PUSH_ALLOWED, Result.FAILED, f"opening an upload failed: {_text(exc)}"
    try:
        await rc.cancel_upload(upload)
    except (rerr.PermissionDenied, rerr.AuthenticationError):
        # docker-registry asks for the `delete` action to cancel an upload.
        return (
            Step.PUSH_ALLOWED,
            Result.OK,
            f"can push to {repository!r}; the account may not delete, so the empty test upload "
            "stays until the registry purges abandoned uploads",
        )
    except rerr.RegistryError as exc:
        return (
            Step.PUSH_ALLOWED,
            Result.OK,
            f"push allowed; cancelling the test upload failed ({_text(exc)}), the registry "
            "purges it later",
        )
    return Step.PUSH_ALLOWED, Result.OK, f"can push to {repository!r} (test upload cancelled)"


def _record_transport_ok(record: Recorder, hostport: str, https: bool, cfg: RegistryConfig) -> None:
    record(Step.REACHABLE, Result.OK, f"{hostport} answers the registry API at /v2/")
    if not https:
        record(Step.TLS_VERIFIED, Result.SKIPPED, "plain HTTP: no TLS")
    elif cfg.insecure_skip_verify:
        record(Step.TLS_VERIFIED, Result.SKIPPED, "not verified: insecure_skip_verify is set")
    else:
        source = "the endpoint's CA" if cfg.ca_pem else "the system trust store"
        record(Step.TLS_VERIFIED, Result.OK, f"certificate verified with {source}")


def _tls_message(exc: BaseException, cfg: RegistryConfig) -> str:
    text = _text(exc)
    low = text.lower()
    if "verify" in low or "issuer" in low or "self-signed" in low or "self signed" in low:
        trust = "the endpoint's CA" if cfg.ca_pem else "the system trust store"
        return (
            f"certificate signed by unknown authority: not trusted by {trust}; set the "
            f"endpoint's ca_pem to the registry's CA ({text})"
        )
    if "hostname" in low or "ip address mismatch" in low:
        return f"certificate does not match the host name ({text})"
    return f"TLS handshake failed: {text}"


def _auth_message(exc: BaseException, cfg: RegistryConfig) -> str:
    if not cfg.username:
        return f"the registry requires credentials and none are set ({_text(exc)})"
    return f"credentials rejected by the registry for user {cfg.username!r} ({_text(exc)})"


def _text(exc: BaseException) -> str:
    """A short, sanitised line: remote servers' error text can be anything (64 KB of HTML,
    control characters), and these messages are readable with a read-only token."""
    return excerpt(str(exc), MESSAGE_CHARS) or type(exc).__name__
