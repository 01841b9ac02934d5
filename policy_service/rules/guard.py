"""What stands between a rule someone sent and the policy server: a per-caller rate limit on
ValidateRule / EvaluateRule, and compilation and evaluation in an isolated worker with a
deadline (``isolation``), each refusal a gRPC status with a clear message.

A rule over the compiler's budgets is an ordinary compile error (INVALID_ARGUMENT, or an error
in ValidateRule's response): that answer does not depend on the server's state. Running out of
the deadline, the memory ceiling or a worker slot does (a loaded machine is slower), so those
are RESOURCE_EXHAUSTED, which tells a client it may retry later, or send a cheaper request.

Settings (constructor arguments, or the environment for the embedded stack):
MIRROR_RULE_CHECK_RATE (per caller, default "20/second"; "" for none), MIRROR_RULE_CHECK_DEADLINE
(seconds), MIRROR_RULE_CHECK_MEMORY_MB, MIRROR_RULE_CHECK_WORKERS.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc import aio

from policy_service.rules.compiler import compile_rule
from policy_service.rules.errors import RuleCompileError, RuleErrorInfo
from policy_service.rules.facts import FactKind
from policy_service.rules.isolation import (
    DEFAULT_PRELOAD,
    OverDeadline,
    Overloaded,
    OverMemory,
    RuleWorkers,
    WorkerDied,
)
from servicekit import errors
from servicekit.ratelimit import CallerRateLimit

log = logging.getLogger("policy_service.rules.guard")

T = TypeVar("T")

# Per caller: room for `mirrorctl apply` validating a file of policies, not for one caller
# keeping every worker slot busy.
DEFAULT_RATE = "20/second"
DEFAULT_DEADLINE = 5.0
DEFAULT_MEMORY_MB = 256
DEFAULT_WORKERS = 2
# How long a client refused for busy workers is asked to wait.
BUSY_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class CheckedRule:
    """What ValidateRule needs from a rule that compiled in a worker (CompiledRule's closures
    cannot cross a process boundary)."""

    fields: frozenset[str]
    required_facts: frozenset[FactKind]
    signed_by_keys: frozenset[str] = frozenset()


def _check(text: str) -> tuple[list[RuleErrorInfo], CheckedRule | None]:
    """Worker job: compile `text`, keep what can be pickled."""
    try:
        rule = compile_rule(text)
    except RuleCompileError as err:
        return err.errors, None
    return [], CheckedRule(rule.fields, rule.required_facts, rule.signed_by_keys)


def _run(fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """Worker job: `fn(*args)` for its exceptions only (its result may not be picklable)."""
    fn(*args)


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


class RuleGuard:
    """Rate limit, deadline and isolation for untrusted rules; see the module docstring."""

    def __init__(self, *, rate: str | None = None, deadline: float | None = None,
                 memory_mb: int | None = None, workers: int | None = None,
                 preload: Sequence[str] = DEFAULT_PRELOAD, warm: bool = True) -> None:
        rate = _env("MIRROR_RULE_CHECK_RATE", DEFAULT_RATE) if rate is None else rate
        self.rate_limit = CallerRateLimit(rate, "rule checks") if rate else None
        self.workers = RuleWorkers(
            concurrency=workers or int(_env("MIRROR_RULE_CHECK_WORKERS", str(DEFAULT_WORKERS))),
            deadline=deadline or float(_env("MIRROR_RULE_CHECK_DEADLINE", str(DEFAULT_DEADLINE))),
            memory_bytes=(memory_mb or int(_env("MIRROR_RULE_CHECK_MEMORY_MB",
                                                str(DEFAULT_MEMORY_MB)))) << 20,
            preload=preload,
        )
        if warm:
            self.workers.warm()

    def admit(self, context: aio.ServicerContext) -> None:
        """RESOURCE_EXHAUSTED with a RetryInfo when this call's caller is over its rate."""
        if self.rate_limit is not None:
            self.rate_limit.check_call(context)

    async def compile(self, text: str) -> CheckedRule:
        """Compile `text` in a worker: its fields and fact kinds, or RuleCompileError."""
        problems, checked = await self.run(_check, text)
        if problems:
            raise RuleCompileError(problems)
        assert checked is not None
        return checked

    async def vetted(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` run first in a worker (its exceptions re-raised here), then, once it is
        known to finish in time, here in a thread for its (unpicklable) result; for compiling a
        policy that is to be kept."""
        await self.run(_run, fn, args)
        return await asyncio.to_thread(fn, *args)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a worker; ApiError RESOURCE_EXHAUSTED when it gives no answer in time
        or in memory, INTERNAL when the worker died."""
        w = self.workers
        try:
            return await w.run(fn, *args)
        except Overloaded as exc:
            log.warning("rule check refused: %s", exc)
            raise errors.resource_exhausted(
                f"the server is busy checking other rules ({w.concurrency} at once); retry "
                f"in {BUSY_RETRY_SECONDS:g} s",
                retry_after=BUSY_RETRY_SECONDS, reason="RULE_CHECKS_BUSY",
            ) from None
        except OverDeadline:
            log.warning("rule check stopped at its deadline of %g s", w.deadline)
            raise errors.resource_exhausted(
                f"the rule took longer than {w.deadline:g} s to compile and evaluate; it was "
                "stopped (simplify the rule, or send fewer facts)",
                reason="RULE_DEADLINE_EXCEEDED",
            ) from None
        except OverMemory:
            log.warning("rule check stopped at its memory ceiling of %d MiB",
                        w.memory_bytes >> 20)
            raise errors.resource_exhausted(
                f"the rule needed more than {w.memory_bytes >> 20} MiB to compile and "
                "evaluate; it was stopped (simplify the rule, or send fewer facts)",
                reason="RULE_MEMORY_EXCEEDED",
            ) from None
        except WorkerDied as exc:
            log.error("rule worker died: %s", exc)
            raise errors.ApiError(grpc.StatusCode.INTERNAL,
                                  "the rule check failed unexpectedly") from None

    def close(self) -> None:
        self.workers.close()
