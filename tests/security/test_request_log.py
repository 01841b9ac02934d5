"""One log line per RPC with method, code and duration, under the caller's request id."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from mirror.v1 import policy_pb2, policy_pb2_grpc

from servicekit.logs import JsonFormatter, _ContextFilter
from servicekit.security import ServerSecurity
from servicekit.server import RunningServer, start_server
from tests.security.servicers import PolicyStub

ADMIN = "admin-token-for-request-log-test"


@pytest.fixture
async def server() -> AsyncIterator[RunningServer]:
    sec = ServerSecurity.build(environ={"MIRROR_ADMIN_TOKEN": ADMIN})
    running = await start_server([PolicyStub()], "127.0.0.1:0", interceptors=sec.interceptors)
    yield running
    await running.stop(0)


@pytest.fixture
def json_lines() -> AsyncIterator[list[str]]:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.addFilter(_ContextFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    yield lines  # type: ignore[misc]
    root.removeHandler(handler)
    root.setLevel(old_level)


async def test_one_line_per_call_with_request_id(
    server: RunningServer, json_lines: list[str]
) -> None:
    md = (("authorization", f"Bearer {ADMIN}"), ("x-request-id", "req-42"))
    policy = policy_pb2.Policy(name="p", rule='tag == "x"')
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = policy_pb2_grpc.PolicyServiceStub(ch)
        await stub.CreatePolicy(policy_pb2.CreatePolicyRequest(policy=policy), metadata=md)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetPolicy(policy_pb2.GetPolicyRequest(id="zz"), metadata=md[:1])
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.ListPolicies(policy_pb2.ListPoliciesRequest(), metadata=md[1:])
    docs = [json.loads(line) for line in json_lines]
    rpc = [d for d in docs if d["logger"] == "servicekit.request"]
    assert [d["msg"].split()[1:3] for d in rpc] == [
        ["/mirror.v1.PolicyService/CreatePolicy", "OK"],
        ["/mirror.v1.PolicyService/GetPolicy", "NOT_FOUND"],
        ["/mirror.v1.PolicyService/ListPolicies", "UNAUTHENTICATED"],
    ]
    assert rpc[0]["ctx"] == "req-42"
    assert rpc[2]["ctx"] == "req-42"
    # Without x-request-id a fresh id is made up, distinct from the default "-".
    assert rpc[1]["ctx"] not in ("-", "req-42")
    assert all(d["msg"].endswith("ms") for d in rpc)
    # The refused call never reached the servicer.
    assert [d for d in docs if d["msg"] == "listing policies"] == []
    text = "\n".join(json_lines)
    assert ADMIN not in text
    assert "authorization" not in text.lower()


async def test_servicer_lines_carry_the_request_id(
    server: RunningServer, json_lines: list[str]
) -> None:
    md = (("authorization", f"Bearer {ADMIN}"), ("x-request-id", "abc.7"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = policy_pb2_grpc.PolicyServiceStub(ch)
        await stub.ListPolicies(policy_pb2.ListPoliciesRequest(), metadata=md)
    docs = [json.loads(line) for line in json_lines]
    assert [d["ctx"] for d in docs if d["msg"] == "listing policies"] == ["abc.7"]


async def test_unsafe_request_id_is_replaced(server: RunningServer, json_lines: list[str]) -> None:
    md = (("authorization", f"Bearer {ADMIN}"), ("x-request-id", "bad id forged line"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = policy_pb2_grpc.PolicyServiceStub(ch)
        await stub.ListPolicies(policy_pb2.ListPoliciesRequest(), metadata=md)
    rpc = [json.loads(x) for x in json_lines if "servicekit.request" in x]
    assert len(rpc) == 1
    assert "forged" not in rpc[0]["ctx"]
