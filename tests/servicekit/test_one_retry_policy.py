"""One retry policy for the whole code base (issue 10): servicekit/retry.py decides which
failures are worth another try and how long to wait (capped exponential backoff with jitter).

The guard reads every module of the project's packages and fails, naming file:line, on what a
retry loop of its own would need: a jitter drawn with `random` (`random.uniform`,
`random.random`, ...), a table of retry delays (`*_DELAYS = (...)`, `for delay in (0.1, ...)`)
or an exponential wait (`delay *= 2`, `delay = min(delay * 2, cap)`, `2 ** attempt`). Only
uses that are not retries are allowed, each with its reason.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from servicekit.retry import Backoff

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = (
    "gateway", "transfer_service", "policy_service", "scanner", "registry_client",
    "servicekit", "console", "stack", "clients",
)
POLICY_HOME = "servicekit/retry.py"

_WAIT = r"\w*(?:delay|wait|backoff|pause|interval|sleep)\w*"
PATTERNS = {
    "a jitter of its own": re.compile(
        r"\brandom\)?\.(?:uniform|random|gauss|triangular|expovariate|betavariate)\s*\("
    ),
    "a table of retry delays": re.compile(
        r"\b_?(?:[A-Z0-9]+_)*DELAYS(?:_[A-Z]+)?\s*(?::[^=\n]*)?=(?!=)"
        r"|\b_?(?:[A-Z0-9]+_)*(?:BACKOFFS?|WAITS?|RETRIES)(?:_[A-Z]+)?\s*(?::[^=\n]*)?="
        r"\s*[(\[]\s*\d"
        rf"|\b(?i:{_WAIT})s\s*(?::[^=\n]*)?=\s*[(\[]\s*\d"
        rf"|\bfor\s+(?i:{_WAIT})\s+in\s+[(\[]\s*\d"
    ),
    "an exponential wait of its own": re.compile(
        rf"\b({_WAIT})\s*\*=\s*\d"
        rf"|\b({_WAIT})\s*=\s*[^=\n]*\b\2\s*\*\s*\d"
        r"|\b\d+(?:\.\d+)?\s*\*\*\s*\(?\s*(?:min\(\s*)?\w*(?:attempt|tries|try|retr|round)",
        re.IGNORECASE,
    ),
}

# (path, text on the line, why it is not a retry wait)
ALLOWED = [
    ("gateway/scheduler.py", "(rng or random).uniform(",
     "a scheduled poll's jitter: the policy's schedule.jitter setting spreads polls over "
     "time; nothing failed, nothing is retried"),
]


def _modules() -> list[Path]:
    out = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == POLICY_HOME or "_pb2" in path.name or "/.venv/" in rel:
                continue
            out.append(path)
    return out


def _findings() -> list[tuple[str, int, str, str]]:
    """(path, line number, what, the line) of every match outside the allow-list."""
    found = []
    for path in _modules():
        rel = path.relative_to(ROOT).as_posix()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            for what, pattern in PATTERNS.items():
                if not pattern.search(code):
                    continue
                if any(rel == p and text in line for p, text, _ in ALLOWED):
                    continue
                found.append((rel, n, what, line.strip()))
    return found


def test_no_retry_loop_keeps_a_policy_of_its_own() -> None:
    modules = _modules()
    assert len(modules) > 100, "the packages were not found"
    found = _findings()
    assert not found, (
        "retry waits outside servicekit/retry.py (use servicekit.retry.Backoff and "
        "is_retryable / transient_rpc_error; or allow-list a use that is not a retry, with "
        "its reason):\n" + "\n".join(f"{p}:{n}: {what}: {line}" for p, n, what, line in found)
    )


def test_every_allowed_use_is_still_there() -> None:
    """An allow-list entry whose line is gone is removed, so it cannot excuse a new one."""
    for path, text, _why in ALLOWED:
        assert text in (ROOT / path).read_text(encoding="utf-8"), (path, text)


@pytest.mark.parametrize("line", [
    "            delay = min(delay * 2, 0.5)",
    "        wait *= 2",
    "        backoff_s = backoff_s * 2.0",
    "RETRY_DELAYS = (0.1, 0.2, 0.4)",
    "TAG_LINK_RETRY_DELAYS_S = (0.1, 0.2, 0.4, 0.8)",
    "_BACKOFF: tuple[float, ...] = (1, 2, 4)",
    "    delays = [0.5, 1, 2]",
    "    for delay in (0.1, 0.2, 0.4):",
    "    await asyncio.sleep(random.uniform(0, 1))",
    "    jitter = random.random() * cap",
    "    jitter = (rng or random).uniform(0, cap)",
    "    return base * 2 ** attempt",
    "    t = 0.5 * 2 ** min(tries, 10)",
])
def test_the_guard_sees_a_retry_policy_of_its_own(line: str) -> None:
    assert any(p.search(line) for p in PATTERNS.values()), line


@pytest.mark.parametrize("line", [
    "    connector = aiohttp.TCPConnector(limit=max(cfg.max_concurrency * 2, 16))",
    "MAX_NUMBER = 2**63 - 1",
    "    await asyncio.sleep(self.lease_s / 3)",
    "    delay = self._quick.delay(live.round_attempts - 1)",
    "    if delay == 0:",
    "_counter = itertools.count(random.randrange(_end - _start))",
])
def test_the_guard_leaves_other_arithmetic_alone(line: str) -> None:
    assert not any(p.search(line) for p in PATTERNS.values()), line


def test_long_waits_are_jittered_but_never_short() -> None:
    """Backoff.spread (the transfer worker's reschedules): within [ceiling / 2, ceiling], and
    spread out, so jobs that failed together do not all come back at one instant."""
    b = Backoff(base=60.0, cap=6 * 3600.0)
    random.seed(10)
    for attempt in range(12):
        top = b.ceiling(attempt)
        waits = [b.spread(attempt) for _ in range(200)]
        assert all(top / 2 <= w <= top for w in waits), attempt
        assert max(waits) - min(waits) > top / 4, attempt
    assert b.ceiling(40) == 6 * 3600.0  # capped at hours


def test_short_waits_are_full_jitter_up_to_the_ceiling() -> None:
    b = Backoff(base=0.02, cap=0.5)  # gateway.leases.LOCK_WAIT
    random.seed(11)
    waits = [b.delay(5) for _ in range(500)]
    assert all(0 <= w <= 0.5 for w in waits)
    assert min(waits) < 0.05 and max(waits) > 0.45
