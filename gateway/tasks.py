"""Background tasks keyed by id: at most one per key, dropped when done, cancelled on stop."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable, Coroutine
from typing import Any

from servicekit.logs import context_id


class KeyedTasks:
    """One asyncio task per key (a run id): follow-ups such as tracking or scanning."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def spawn(self, key: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start `work()` for `key` unless a task for it is still running (idempotent).

        Lines the task logs carry `key` as their context id."""
        if key in self._tasks:
            return
        ctx = contextvars.copy_context()
        ctx.run(context_id.set, key)
        task = asyncio.create_task(work(), context=ctx)
        self._tasks[key] = task
        task.add_done_callback(lambda _t: self._tasks.pop(key, None))

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, key: object) -> bool:
        return key in self._tasks

    def keys(self) -> list[str]:
        return list(self._tasks)

    def cancel(self, key: str) -> None:
        """Cancel the task of `key`, if any (it is dropped when it has ended)."""
        task = self._tasks.get(key)
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        """Cancel every task and wait until each has ended."""
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
