"""gRPC servicer of mirror.v1.GatewayService."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable
from typing import TypeVar

import grpc
from google.protobuf import empty_pb2
from grpc import aio
from mirror.v1 import gateway_pb2, gateway_pb2_grpc, policy_pb2, policy_pb2_grpc

from gateway.deletions import Deleter
from gateway.endpoints import EndpointDirectory, unplaced_with_suggestions
from gateway.inbox import Inbox, InboxEvent
from gateway.polls import PollStore
from gateway.runs import RunStore
from gateway.subscriptions import SubscriptionStore, check_subscription
from gateway.sweep import Sweeper
from registry_client import names
from servicekit import metrics
from servicekit.errors import (
    ApiError,
    failed_precondition,
    invalid_argument,
    not_found,
    unavailable,
)

R = TypeVar("R")
MAX_EVENT_ID = 256
_STARTED = frozenset(
    {
        gateway_pb2.Run.STATE_PENDING,
        gateway_pb2.Run.STATE_RUNNING,
        gateway_pb2.Run.STATE_SUCCEEDED,
        gateway_pb2.Run.STATE_FAILED,
    }
)


async def _call(what: str, aw: Awaitable[R]) -> R:
    """Await a call to another service; its status becomes ours (UNAVAILABLE stays so)."""
    try:
        return await aw
    except aio.AioRpcError as err:
        if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise unavailable(f"{what}: {err.details()}") from err
        raise ApiError(err.code(), f"{what}: {err.details()}") from err


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    """Mountable (servicekit) gateway API over the inbox, the run store and the sweeper."""

    service_name = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name

    def __init__(
        self,
        inbox: Inbox,
        runs: RunStore,
        sweeper: Sweeper,
        directory: EndpointDirectory,
        policy: policy_pb2_grpc.PolicyServiceStub,
        polls: PollStore | None = None,
        subscriptions: SubscriptionStore | None = None,
        deleter: Deleter | None = None,
    ) -> None:
        self.inbox = inbox
        self.runs = runs
        self.db = runs.db
        self.sweeper = sweeper
        self.directory = directory
        self.policy = policy
        self.polls = polls
        self.deleter = deleter
        self.subscriptions = subscriptions

    def mount(self, server: aio.Server) -> None:
        gateway_pb2_grpc.add_GatewayServiceServicer_to_server(self, server)

    async def NotifyPush(
        self, request: gateway_pb2.NotifyPushRequest, context: aio.ServicerContext
    ) -> gateway_pb2.NotifyPushResponse:
        bad = []
        if not request.endpoint:
            bad.append(("endpoint", "required: the name of the source endpoint"))
        if not names.is_repository(request.repository):
            bad.append(("repository", "required: a repository name such as dev/website"))
        if not names.is_tag(request.tag):
            bad.append(("tag", "required: a valid tag"))
        if request.digest and not names.is_digest(request.digest):
            bad.append(("digest", "not a digest (algorithm:hex)"))
        if len(request.event_id) > MAX_EVENT_ID:
            bad.append(("event_id", f"longer than {MAX_EVENT_ID} characters"))
        if bad:
            raise invalid_argument("the push notification is not valid", bad)
        exists = await _call("listing endpoints", self.directory.exists(request.endpoint))
        if not exists:
            raise not_found(f"endpoint {request.endpoint!r} not found", reason="ENDPOINT_NOT_FOUND")
        event_id = request.event_id or f"notify-{uuid.uuid4().hex}"
        (added,) = await self.inbox.add(
            [
                InboxEvent(
                    id=event_id,
                    trigger=gateway_pb2.Run.TRIGGER_NOTIFY,
                    repository=request.repository,
                    tag=request.tag,
                    digest=request.digest,
                    received_at=time.time(),
                    endpoint=request.endpoint,
                )
            ]
        )
        metrics.EVENTS_RECEIVED.labels("notify", "push").inc()
        return gateway_pb2.NotifyPushResponse(event_id=event_id, duplicate=not added)

    async def ListRuns(
        self, request: gateway_pb2.ListRunsRequest, context: aio.ServicerContext
    ) -> gateway_pb2.ListRunsResponse:
        for s in request.states:
            if s not in gateway_pb2.Run.State.values() or s == 0:
                raise invalid_argument("unknown run state", [("states", f"{s} is not a state")])
        recs, token = await self.db.run(
            self.runs.list,
            request.policy_id, list(request.states), request.page_size, request.page_token
        )
        return gateway_pb2.ListRunsResponse(
            runs=[r.to_proto() for r in recs], next_page_token=token
        )

    async def GetPolicyStatus(
        self, request: gateway_pb2.GetPolicyStatusRequest, context: aio.ServicerContext
    ) -> gateway_pb2.PolicyStatus:
        if not request.policy_id:
            raise invalid_argument("policy_id is required", [("policy_id", "empty")])
        st = await self.db.run(self.runs.policy_status, request.policy_id)
        if st.runs_total == 0:
            # Never ran: NOT_FOUND unless the policy exists.
            await _call(
                "reading the policy",
                self.policy.GetPolicy(
                    policy_pb2.GetPolicyRequest(id=request.policy_id), timeout=30
                ),
            )
        baseline = await self.db.run(self.sweeper.baselines.taken_at, request.policy_id)
        if baseline is not None:
            st.baseline_time.FromNanoseconds(int(baseline * 1e9))
        if self.polls is not None:
            last = await self.db.run(self.polls.last, request.policy_id)
            if last is not None:
                st.last_poll.CopyFrom(last.to_proto())
            nxt = await self.db.run(self.polls.planned, request.policy_id)
            if nxt is not None:
                st.next_poll_time.FromNanoseconds(int(nxt * 1e9))
        return st

    async def PrunePolicy(
        self, request: gateway_pb2.PrunePolicyRequest, context: aio.ServicerContext
    ) -> gateway_pb2.PrunePolicyResponse:
        if not request.policy_id:
            raise invalid_argument("policy_id is required", [("policy_id", "empty")])
        if self.deleter is None:
            raise unavailable("this gateway cannot delete tags")
        pol = await _call(
            "reading the policy",
            self.policy.GetPolicy(policy_pb2.GetPolicyRequest(id=request.policy_id), timeout=30),
        )
        runs, kept = await self.deleter.prune(pol, request.dry_run)
        return gateway_pb2.PrunePolicyResponse(
            runs=[r.to_proto() for r in runs], tags_kept=kept
        )

    async def ListPolls(
        self, request: gateway_pb2.ListPollsRequest, context: aio.ServicerContext
    ) -> gateway_pb2.ListPollsResponse:
        if not request.policy_id:
            raise invalid_argument("policy_id is required", [("policy_id", "empty")])
        if self.polls is None:
            return gateway_pb2.ListPollsResponse()
        recs, token = await self.db.run(
            self.polls.page, request.policy_id, request.page_size, request.page_token
        )
        return gateway_pb2.ListPollsResponse(
            polls=[r.to_proto() for r in recs], next_page_token=token
        )

    async def ApplyPolicy(
        self, request: gateway_pb2.ApplyPolicyRequest, context: aio.ServicerContext
    ) -> gateway_pb2.ApplyPolicyResponse:
        r = await _call("applying the policy", self.sweeper.apply(request.policy_id))
        return gateway_pb2.ApplyPolicyResponse(
            tags_evaluated=r.tags_evaluated,
            tags_matched=r.tags_matched,
            runs=[x.to_proto() for x in r.runs],
            errors=r.errors,
        )

    async def Reconcile(
        self, request: gateway_pb2.ReconcileRequest, context: aio.ServicerContext
    ) -> gateway_pb2.ReconcileResponse:
        r = await _call("reconciling", self.sweeper.reconcile(request.policy_id))
        started = [x for x in r.runs if x.state in _STARTED]
        return gateway_pb2.ReconcileResponse(
            tags_checked=r.tags_checked,
            runs_started=len(started),
            runs=[x.to_proto() for x in r.runs],
            errors=r.errors,
        )

    async def ListUnplacedEvents(
        self, request: gateway_pb2.ListUnplacedEventsRequest, context: aio.ServicerContext
    ) -> gateway_pb2.ListUnplacedEventsResponse:
        if request.page_size < 0:
            raise invalid_argument("page_size must not be negative", [("page_size", "< 0")])
        size = min(request.page_size or 100, 1000)
        endpoints = await _call("listing endpoints", self.directory.all())
        groups = await self.db.run(self.inbox.unplaced, limit=1000)
        return gateway_pb2.ListUnplacedEventsResponse(
            events=unplaced_with_suggestions(groups, endpoints, size)
        )

    # Outbound-event subscriptions (gateway/subscriptions.py; docs/events.md).

    def _subs(self) -> SubscriptionStore:
        if self.subscriptions is None:
            raise failed_precondition("this gateway has no subscription store")
        return self.subscriptions

    async def CreateSubscription(
        self, request: gateway_pb2.CreateSubscriptionRequest, context: aio.ServicerContext
    ) -> gateway_pb2.Subscription:
        store = self._subs()
        sub = request.subscription
        bad = check_subscription(sub)
        if bad:
            raise invalid_argument("the subscription is not valid", bad)
        if sub.policy_id:
            # NOT_FOUND for a policy that does not exist (a filter that could never match).
            await _call(
                "reading the policy",
                self.policy.GetPolicy(policy_pb2.GetPolicyRequest(id=sub.policy_id), timeout=30),
            )
        return await self.db.run(store.create, sub)

    async def GetSubscription(
        self, request: gateway_pb2.GetSubscriptionRequest, context: aio.ServicerContext
    ) -> gateway_pb2.Subscription:
        if not request.id:
            raise invalid_argument("id is required", [("id", "empty")])
        return (await self.db.run(self._subs().get, request.id)).to_proto()

    async def ListSubscriptions(
        self, request: gateway_pb2.ListSubscriptionsRequest, context: aio.ServicerContext
    ) -> gateway_pb2.ListSubscriptionsResponse:
        subs, token = await self.db.run(self._subs().page, request.page_size, request.page_token)
        return gateway_pb2.ListSubscriptionsResponse(
            subscriptions=[s.to_proto() for s in subs], next_page_token=token
        )

    async def DeleteSubscription(
        self, request: gateway_pb2.DeleteSubscriptionRequest, context: aio.ServicerContext
    ) -> empty_pb2.Empty:
        if not request.id:
            raise invalid_argument("id is required", [("id", "empty")])
        await self.db.run(self._subs().delete, request.id)
        return empty_pb2.Empty()

    async def ListDeliveries(
        self, request: gateway_pb2.ListDeliveriesRequest, context: aio.ServicerContext
    ) -> gateway_pb2.ListDeliveriesResponse:
        recs, token = await self.db.run(
            self._subs().deliveries,
            request.subscription_id, request.page_size, request.page_token
        )
        return gateway_pb2.ListDeliveriesResponse(
            deliveries=[d.to_proto() for d in recs], next_page_token=token
        )
