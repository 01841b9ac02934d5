"""The servicer under grpc_testing, through a sync adapter.

grpc_testing drives sync servicers only, so the adapter runs each async servicer method on a
background event loop and maps ApiError to the code, message and google.rpc details the
servicekit interceptor would send (grpc_testing lacks abort_with_status,
and its abort() drops trailing metadata, so the adapter sets code, details and metadata).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc_testing
import pytest
from google.rpc import error_details_pb2, status_pb2
from mirror.v1 import common_pb2, policy_pb2

from policy_service.servicer import PolicyServicer
from policy_service.store import PolicyStore
from servicekit import errors

SERVICE = policy_pb2.DESCRIPTOR.services_by_name["PolicyService"]


class RefusingChecker:
    """A PushChecker that knows endpoints dev and qa and refuses one repository, as the
    transfer service would."""

    async def check(self, endpoint: str, repository: str) -> None:
        if repository == "qa/locked":
            raise errors.failed_precondition(
                "not pushable", [("STEP_PUSH_ALLOWED", f"{endpoint}/{repository}", "denied")]
            )

    async def require_endpoint(self, endpoint: str) -> None:
        if endpoint not in ("dev", "qa"):
            raise errors.failed_precondition("no such endpoint", reason="ENDPOINT_NOT_FOUND")

    async def endpoint_names(self) -> list[str]:
        return ["dev", "qa"]


class SyncAdapter:
    """Exposes every PolicyService method of an async servicer as a sync method."""

    def __init__(self, servicer: PolicyServicer, loop: asyncio.AbstractEventLoop) -> None:
        for method in SERVICE.methods:
            setattr(self, method.name, self._wrap(getattr(servicer, method.name), loop))

    @staticmethod
    def _wrap(fn: Callable[..., Any], loop: asyncio.AbstractEventLoop) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return asyncio.run_coroutine_threadsafe(fn(request, context), loop).result()
            except errors.ApiError as err:
                status = err.to_status()
                # abort() would drop the trailing metadata that carries the details.
                context.set_trailing_metadata(status.trailing_metadata)
                context.set_code(status.code)
                context.set_details(status.details)
                return None

        return call


@pytest.fixture
def server(tmp_path: Path) -> Iterator[grpc_testing.Server]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    store = PolicyStore.open(tmp_path)

    async def build() -> PolicyServicer:  # the servicer's lock belongs to this loop
        return PolicyServicer(store, RefusingChecker())

    servicer = asyncio.run_coroutine_threadsafe(build(), loop).result()
    yield grpc_testing.server_from_dictionary(
        {SERVICE: SyncAdapter(servicer, loop)}, grpc_testing.strict_real_time()
    )
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()
    store.close()


def _call(server: grpc_testing.Server, method: str, request: Any) -> tuple[Any, Any, Any, str]:
    rpc = server.invoke_unary_unary(SERVICE.methods_by_name[method], (), request, None)
    return rpc.termination()


def _status(trailing: Any) -> status_pb2.Status:
    raw = dict(trailing)["grpc-status-details-bin"]
    return status_pb2.Status.FromString(raw)


def _policy(**kw: object) -> policy_pb2.Policy:
    base: dict[str, object] = dict(
        name="p", source=policy_pb2.PolicySource(endpoint="dev", repository="dev/*"),
        rule='tag endswith "stable"', enabled=True,
        target=common_pb2.Target(endpoint="qa", repository="qa/{path}"),
    )
    base.update(kw)
    return policy_pb2.Policy(**base)  # type: ignore[arg-type]


def test_create_and_evaluate(server: grpc_testing.Server) -> None:
    created, _, code, _ = _call(
        server, "CreatePolicy", policy_pb2.CreatePolicyRequest(policy=_policy())
    )
    assert code == grpc.StatusCode.OK and created.id
    resp, _, code, _ = _call(
        server, "Evaluate",
        policy_pb2.EvaluateRequest(
            endpoint="dev",
            facts=common_pb2.ImageFacts(repository="dev/website", tag="2.0-stable")
        ),
    )
    assert code == grpc.StatusCode.OK
    assert [(r.policy_id, r.matched, r.tag, r.target.repository) for r in resp.results] == [
        (created.id, True, "2.0-stable", "qa/website")
    ]


def test_bad_rule_carries_bad_request_details(server: grpc_testing.Server) -> None:
    _, trailing, code, message = _call(
        server, "CreatePolicy",
        policy_pb2.CreatePolicyRequest(policy=_policy(rule="tga == 1")),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "rule: line 1, column 1" in message
    st = _status(trailing)
    br = error_details_pb2.BadRequest()
    assert st.details[0].Unpack(br)
    assert [v.field for v in br.field_violations] == ["policy.rule"]


def test_refused_target_is_failed_precondition(server: grpc_testing.Server) -> None:
    _, trailing, code, _ = _call(
        server, "CreatePolicy",
        policy_pb2.CreatePolicyRequest(
            policy=_policy(
                source=policy_pb2.PolicySource(endpoint="dev", repository="dev/website"),
                target=common_pb2.Target(endpoint="qa", repository="qa/locked"),
            )
        ),
    )
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    pf = error_details_pb2.PreconditionFailure()
    assert _status(trailing).details[0].Unpack(pf)
    assert [(v.type, v.description) for v in pf.violations] == [("STEP_PUSH_ALLOWED", "denied")]
    listed, _, _, _ = _call(server, "ListPolicies", policy_pb2.ListPoliciesRequest())
    assert list(listed.policies) == []
