"""Untrusted rule work in a child process: a deadline, an address-space ceiling, a few at once.

Compiling and evaluating a rule someone sent is bounded by the compiler's budgets, but a rule
evaluated over a huge facts message, or a pathology no budget foresaw, must still not hold the
server's event loop, its GIL or its memory. Each job runs in a process forked from a
`multiprocessing` fork server (a clean interpreter with the rule modules preloaded, so a fork
costs milliseconds and inherits no gRPC state), is killed at its deadline, and cannot grow past
its memory ceiling. Results and exceptions come back pickled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import resource
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any, TypeVar

log = logging.getLogger("policy_service.rules.isolation")

T = TypeVar("T")

DEFAULT_PRELOAD = ("policy_service.rules",)


class IsolationError(Exception):
    """A job did not give an answer; the subclass says why."""


class Overloaded(IsolationError):
    """Every worker slot stayed busy for the whole deadline."""


class OverDeadline(IsolationError):
    """The job ran past its deadline and was killed."""


class OverMemory(IsolationError):
    """The job needed more memory than its ceiling."""


class WorkerDied(IsolationError):
    """The child ended without an answer (a crash or a signal)."""


def _address_space() -> int:
    """This process's virtual size in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _child(out: Connection, memory: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """The child's body: cap the address space, run `fn`, send back what happened."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space() + memory
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        result: tuple[str, Any] = ("ok", fn(*args))
    except MemoryError:
        result = ("memory", None)
    except Exception as exc:
        result = ("raised", exc)
    try:
        out.send(result)
    except MemoryError:
        out.send(("memory", None))
    except Exception as exc:
        out.send(("raised", RuntimeError(f"rule job answer could not be sent: {exc!r}")))
    out.close()


class _Job:
    """What a waiting coroutine needs to kill its child when the call is cancelled."""

    def __init__(self) -> None:
        self.process: multiprocessing.process.BaseProcess | None = None
        self.cancelled = threading.Event()

    def kill(self) -> None:
        self.cancelled.set()
        if self.process is not None and self.process.is_alive():
            self.process.kill()


class RuleWorkers:
    """Runs functions in killable child processes: at most `concurrency` at once, each given
    `deadline` seconds from the call (waiting for a slot included, at most `queue_wait`) and
    `memory_bytes` of address space beyond what the child starts with."""

    def __init__(self, *, concurrency: int = 2, deadline: float = 5.0,
                 queue_wait: float | None = None, memory_bytes: int = 256 << 20,
                 preload: Sequence[str] = DEFAULT_PRELOAD) -> None:
        self.concurrency = concurrency
        self.deadline = deadline
        self.queue_wait = deadline if queue_wait is None else min(queue_wait, deadline)
        self.memory_bytes = memory_bytes
        self._ctx = multiprocessing.get_context("forkserver")
        # Only takes effect if this process has not started its fork server yet; otherwise the
        # child imports what it needs on first use (slower, still correct).
        self._ctx.set_forkserver_preload(list(preload))
        self._slots: asyncio.Semaphore | None = None
        self._threads = ThreadPoolExecutor(concurrency, thread_name_prefix="rule-worker")

    def warm(self) -> None:
        """Start the fork server in the background, so the first job does not wait for it."""
        from multiprocessing import forkserver

        threading.Thread(target=forkserver.ensure_running, name="rule-forkserver",
                         daemon=True).start()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a child process (`fn` and `args` picklable, `fn` importable by name);
        re-raises what it raised; IsolationError when it gave no answer."""
        started = time.monotonic()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        try:
            await asyncio.wait_for(self._slots.acquire(), self.queue_wait)
        except TimeoutError:
            raise Overloaded(f"all {self.concurrency} rule workers stayed busy for "
                             f"{self.queue_wait:g} s") from None
        job = _Job()
        try:
            left = self.deadline - (time.monotonic() - started)
            loop = asyncio.get_running_loop()
            future = loop.run_in_executor(self._threads, self._in_child, job, fn, args, left)
            try:
                status, value = await asyncio.shield(future)
            except asyncio.CancelledError:
                job.kill()  # the call is gone: stop its work now, not at the deadline
                raise
        finally:
            self._slots.release()
        if status == "ok":
            return value  # type: ignore[no-any-return]
        if status == "raised":
            raise value
        if status == "memory":
            raise OverMemory(f"the job needed more than {self.memory_bytes >> 20} MiB")
        if status == "deadline":
            raise OverDeadline(f"the job ran longer than {self.deadline:g} s")
        raise WorkerDied(value)

    def _in_child(self, job: _Job, fn: Callable[..., Any], args: tuple[Any, ...],
                  timeout: float) -> tuple[str, Any]:
        """Blocking: start the child, wait up to `timeout` for its answer, always reap it."""
        reader, writer = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(target=_child, args=(writer, self.memory_bytes, fn, args),
                                    name="rule-job", daemon=True)
        try:
            if job.cancelled.is_set():
                return "died", "cancelled"
            process.start()
            job.process = process
            writer.close()
            deadline = time.monotonic() + timeout
            if not reader.poll(max(0.0, timeout)):
                return "deadline", None
            try:
                answer: tuple[str, Any] = reader.recv()
            except EOFError:
                process.join(max(0.0, deadline - time.monotonic()))
                return "died", f"the rule worker ended without an answer (exit {process.exitcode})"
            return answer
        finally:
            reader.close()
            with contextlib.suppress(OSError):
                writer.close()
            if process.pid is not None:
                if process.is_alive():
                    process.kill()
                process.join(5)  # bounded: a stuck fork server must not hang this thread
                if process.exitcode is None:
                    log.error("rule job %s did not exit after SIGKILL", process.pid)
                else:
                    process.close()

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
