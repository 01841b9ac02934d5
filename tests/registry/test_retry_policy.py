"""The one retry policy (servicekit.retry): what is retryable, and how long to wait."""

from __future__ import annotations

import aiohttp
import pytest

from registry_client import errors
from servicekit.errors import invalid_argument
from servicekit.retry import Backoff, is_retryable, retry_after_hint, retryable_status
from transfer_service import retry as transfer_retry
from transfer_service.engine import DescriptorMismatch, TagExists
from transfer_service.engine.blobs import transient


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_transient_statuses_are_retryable(status: int) -> None:
    assert retryable_status(status)
    assert is_retryable(errors.error_for(status, b""))


@pytest.mark.parametrize("status", [200, 400, 401, 403, 404, 405, 409, 413, 501])
def test_other_statuses_are_not(status: int) -> None:
    assert not retryable_status(status)
    if status >= 400:
        assert not is_retryable(errors.error_for(status, b""))


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionResetError(),
        TimeoutError(),
        TimeoutError(),
        aiohttp.ServerDisconnectedError(),
        errors.ConnectError(0, "", "reset"),
        errors.Stalled(0, "", "no bytes"),
        errors.DigestMismatch(0, "DIGEST_INVALID", "in transit"),
        errors.RetryAfterTooLong(429, "", "later", retry_after=3600),
    ],
)
def test_retryable_failures(exc: BaseException) -> None:
    assert is_retryable(exc)
    assert transfer_retry.is_retryable(exc)


@pytest.mark.parametrize(
    "exc",
    [
        errors.AuthenticationError(401),
        errors.PermissionDenied(403),
        errors.NotFound(404),
        errors.TlsError(0, "", "unknown CA"),
        errors.InvalidRequest(400),
        invalid_argument("bad"),
        TagExists("r", "t", "sha256:a", "sha256:b"),
        DescriptorMismatch("size lies"),
        ValueError("a bug"),
    ],
)
def test_permanent_failures(exc: BaseException) -> None:
    assert not is_retryable(exc)


def test_stalls_and_long_waits_go_to_the_scheduler_not_the_blob_loop() -> None:
    assert not transient(errors.Stalled(0, "", "no bytes"))
    assert not transient(errors.RetryAfterTooLong(503, "", "later", retry_after=90))
    assert transient(errors.ConnectError(0, "", "reset"))
    assert retry_after_hint(errors.RetryAfterTooLong(503, "", "later", retry_after=90)) == 90
    assert retry_after_hint(errors.ConnectError()) is None


def test_backoff_is_full_jitter_under_a_cap() -> None:
    b = Backoff(base=0.5, cap=4.0)
    assert [b.ceiling(n) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert b.ceiling(10_000) == 4.0  # no overflow
    for n in range(8):
        delays = [b.delay(n) for _ in range(200)]
        assert all(0 <= d <= b.ceiling(n) for d in delays)
    # Spread, not a fixed value (full jitter).
    assert len({round(b.delay(3), 6) for _ in range(50)}) > 10
