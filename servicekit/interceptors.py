"""Server interceptor that turns ApiError (and unexpected exceptions) into gRPC status."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from servicekit.diskfull import no_space_message
from servicekit.errors import ApiError
from servicekit.handlers import is_async, rewrap

log = logging.getLogger("servicekit.rpc")


async def _abort(context: aio.ServicerContext, err: ApiError) -> None:
    await context.abort_with_status(err.to_status())


async def _unexpected(context: aio.ServicerContext, method: str, exc: Exception) -> None:
    """A full data volume is said as such (the caller may free space and retry); anything
    else is INTERNAL, its cause in the server log only."""
    full = no_space_message(exc)
    if full is not None:
        log.error("%s: %s: %s", method, full, exc)
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED, f"{full}: {method} failed; free space and retry"
        )
    log.exception("unhandled error in %s", method)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")


def _wrap_unary(fn: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: aio.ServicerContext) -> Any:
        try:
            return await fn(request, context)
        except ApiError as err:
            await _abort(context, err)
        except aio.AbortError:
            raise
        except Exception as exc:
            await _unexpected(context, method, exc)

    return handler


def _wrap_stream(
    fn: Callable[..., AsyncIterator[Any]], method: str
) -> Callable[..., AsyncIterator[Any]]:
    async def handler(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in fn(request, context):
                yield item
        except ApiError as err:
            await _abort(context, err)
        except aio.AbortError:
            raise
        except Exception as exc:
            await _unexpected(context, method, exc)

    return handler


class ErrorInterceptor(aio.ServerInterceptor):
    """Maps ApiError to its status and details; hides unexpected exceptions as INTERNAL."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if not is_async(handler):
            return handler
        return rewrap(
            handler, lambda fn: _wrap_unary(fn, method), lambda fn: _wrap_stream(fn, method)
        )
