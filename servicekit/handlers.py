"""Rebuilding a gRPC method handler around wrapped behaviour: what every interceptor needs."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import grpc

Wrap = Callable[[Callable[..., Any]], Callable[..., Any]]


def is_async(handler: grpc.RpcMethodHandler) -> bool:
    """Whether the handler's behaviour is a coroutine or async generator (sync ones, like the
    grpc health servicer, are run by grpc as they are and cannot be wrapped in async code)."""
    fn = (
        handler.unary_unary
        or handler.unary_stream
        or handler.stream_unary
        or handler.stream_stream
    )
    return fn is None or inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)


def rewrap(handler: grpc.RpcMethodHandler, unary: Wrap, stream: Wrap) -> grpc.RpcMethodHandler:
    """A handler of the same kind and serializers whose behaviour is `unary(fn)` for calls with
    one response and `stream(fn)` for calls with a response stream."""
    kw: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kw)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), **kw)
    return handler
