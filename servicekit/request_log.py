"""One log line per RPC (method, status code, duration) under a per-request context id.

The id comes from the caller's `x-request-id` metadata (when it looks like an id) or is made
up. Request bodies and metadata values are never logged: they may carry secrets and tokens.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from servicekit import metrics
from servicekit.handlers import is_async, rewrap
from servicekit.logs import context_id

log = logging.getLogger("servicekit.request")

_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def request_id(metadata: Any) -> str:
    """The caller's x-request-id when it is a plain id, else a new random one."""
    for key, value in metadata or ():
        if key.lower() == "x-request-id":
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            if _ID_RE.match(text):
                return text
            break
    return uuid.uuid4().hex[:16]


def _code_name(context: aio.ServicerContext, default: grpc.StatusCode) -> str:
    code = context.code()
    if code is None:
        return default.name
    if isinstance(code, grpc.StatusCode):
        return code.name
    # Some grpc versions report the numeric value.
    for c in grpc.StatusCode:
        if c.value[0] == code:
            return c.name
    return str(code)


class RequestLogInterceptor(aio.ServerInterceptor):
    """Sets servicekit.logs.context_id for the call and logs its outcome when it ends."""

    def __init__(self, logger: logging.Logger | None = None, skip_health: bool = True) -> None:
        self._log = logger or log
        self._skip_health = skip_health

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None:
            return handler
        if not is_async(handler):
            return handler
        quiet = self._skip_health and method.startswith("/grpc.health.v1.Health/")
        rid = request_id(handler_call_details.invocation_metadata)
        logger = self._log

        def finish(context: aio.ServicerContext, started: float, default: grpc.StatusCode) -> None:
            code = _code_name(context, default)
            seconds = time.monotonic() - started
            metrics.RPCS.labels(method, code).inc()
            metrics.RPC_SECONDS.labels(method).observe(seconds)
            if quiet:
                return
            ms = seconds * 1000
            level = logging.INFO if code in ("OK", "CANCELLED") else logging.WARNING
            if code in ("INTERNAL", "UNKNOWN", "DATA_LOSS"):
                level = logging.ERROR
            logger.log(
                level,
                "rpc %s %s %.1fms",
                method,
                code,
                ms,
                extra={"rpc_method": method, "code": code, "duration_ms": round(ms, 1)},
            )

        def wrap_unary(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def run(request: Any, context: aio.ServicerContext) -> Any:
                context_id.set(rid)
                started = time.monotonic()
                outcome = grpc.StatusCode.OK
                try:
                    return await fn(request, context)
                except asyncio.CancelledError:
                    outcome = grpc.StatusCode.CANCELLED
                    raise
                except BaseException:
                    outcome = grpc.StatusCode.UNKNOWN
                    raise
                finally:
                    finish(context, started, outcome)

            return run

        def wrap_stream(fn: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
            async def run(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
                context_id.set(rid)
                started = time.monotonic()
                outcome = grpc.StatusCode.OK
                try:
                    async for item in fn(request, context):
                        yield item
                except (asyncio.CancelledError, GeneratorExit):
                    outcome = grpc.StatusCode.CANCELLED
                    raise
                except BaseException:
                    outcome = grpc.StatusCode.UNKNOWN
                    raise
                finally:
                    finish(context, started, outcome)

            return run

        return rewrap(handler, wrap_unary, wrap_stream)
