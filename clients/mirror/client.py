"""The blocking client: `connect(address, tls=..., token=...)` -> `Client`.

    from mirror.client import connect
    with connect("127.0.0.1:50051", token="...") as client:
        for policy in client.policies.iter():
            print(policy.name)

Every method raises a `mirror.errors.MirrorError` subclass when the call fails.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, NamedTuple, overload

import grpc
from google.protobuf import message as pb_message

from mirror import _build, policyfields
from mirror.channel import (
    DEFAULT_ADDRESS,
    ChannelPool,
    TlsArg,
    TlsOptions,
    auth_metadata,
    sync_channel,
)
from mirror.errors import from_rpc_error
from mirror.errors import rate_limit_wait as _retry_wait
from mirror.v1 import (
    common_pb2,
    gateway_pb2,
    policy_pb2,
    scan_pb2,
    transfer_pb2,
)

__all__ = ["DEFAULT_ADDRESS", "Client", "PolicyApplied", "TlsOptions", "connect"]


class PolicyApplied(NamedTuple):
    """What Save & Apply (`policies.create(..., apply=True)`) returns: both answers."""

    policy: policy_pb2.Policy
    applied: gateway_pb2.ApplyPolicyResponse


class _Service:
    """The blocking calls under a service facade.

    Facade methods only build a request and hand the call back (`return self._call(...)`,
    `return self._pages(...)`, `return self._stream(...)`): `mirror.aio` runs these same methods
    on its awaiting `_Service`, so a method must not use the result of a call itself; a method
    that needs it passes a function to `self._then(call, fn)`.
    """

    def __init__(
        self, stub: Any, metadata: tuple[tuple[str, str], ...], timeout: float | None,
        rate_limit_wait: float = 0.0,
    ):
        self._stub = stub
        self._metadata = metadata
        self._timeout = timeout
        self._rate_limit_wait = rate_limit_wait

    def _call(self, method: str, request: pb_message.Message, *, void: bool = False) -> Any:
        """Call a unary RPC; `void`: the caller gets None rather than the (empty) response.

        A rate-limit refusal (RESOURCE_EXHAUSTED with a RetryInfo) is retried after the wait
        it asks for, while the waits add up to at most `rate_limit_wait` seconds."""
        waited = 0.0
        while True:
            try:
                response = getattr(self._stub, method)(
                    request, metadata=self._metadata, timeout=self._timeout
                )
            except grpc.RpcError as err:
                error = from_rpc_error(err)
                delay = _retry_wait(error, self._rate_limit_wait - waited)
                if delay is None:
                    raise error from None
                time.sleep(delay)
                waited += delay
                continue
            return None if void else response

    def _then(self, result: Any, fn: Callable[[Any], Any]) -> Any:
        """`fn` applied to a call's result (`mirror.aio` awaits the call, and `fn`'s result)."""
        return fn(result)

    def _stream(self, method: str, request: pb_message.Message) -> Iterator[Any]:
        call = getattr(self._stub, method)(request, metadata=self._metadata)
        try:
            yield from call
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        finally:
            call.cancel()

    def _pages(self, list_page: Callable[..., Any], items: str, **query: Any) -> Iterator[Any]:
        """Every item of every page: `list_page(page_token=..., **query)` until no next token."""
        token = ""
        while True:
            page = list_page(page_token=token, **query)
            yield from getattr(page, items)
            token = page.next_page_token
            if not token:
                return


class Policies(_Service):
    """PolicyService: policies, rule validation and evaluation."""

    # The client's gateway facade, for Save & Apply (set by Client).
    _gateway: Gateway | None = None

    @overload
    def create(
        self, policy: policy_pb2.Policy | None = ..., *, name: str | None = ...,
        source_endpoint: str | None = ..., source_repository: str | None = ...,
        rule: str | None = ..., endpoint: str | None = ..., repository: str | None = ...,
        tag_template: str | None = ..., time_zone: str | None = ..., enabled: bool | None = ...,
        description: str | None = ..., overwrite: _build.OverwriteArg | None = ...,
        allow_incomplete_facts: bool | None = ..., trigger: policyfields.TriggerArg | None = ...,
        platforms: Iterable[str] | None = ..., keep_newest: int | None = ...,
        deletions: _build.DeletionsArg | None = ..., copy_referrers: Iterable[str] | None = ...,
        signature_wait: policyfields.DurationArg | None = ..., validate_only: bool = ...,
        apply: Literal[False] = ...,
    ) -> policy_pb2.Policy: ...

    @overload
    def create(
        self, policy: policy_pb2.Policy | None = ..., *, name: str | None = ...,
        source_endpoint: str | None = ..., source_repository: str | None = ...,
        rule: str | None = ..., endpoint: str | None = ..., repository: str | None = ...,
        tag_template: str | None = ..., time_zone: str | None = ..., enabled: bool | None = ...,
        description: str | None = ..., overwrite: _build.OverwriteArg | None = ...,
        allow_incomplete_facts: bool | None = ..., trigger: policyfields.TriggerArg | None = ...,
        platforms: Iterable[str] | None = ..., keep_newest: int | None = ...,
        deletions: _build.DeletionsArg | None = ..., copy_referrers: Iterable[str] | None = ...,
        signature_wait: policyfields.DurationArg | None = ..., validate_only: bool = ...,
        apply: Literal[True],
    ) -> PolicyApplied: ...

    def create(
        self,
        policy: policy_pb2.Policy | None = None,
        *,
        name: str | None = None,
        source_endpoint: str | None = None,
        source_repository: str | None = None,
        rule: str | None = None,
        endpoint: str | None = None,
        repository: str | None = None,
        tag_template: str | None = None,
        time_zone: str | None = None,
        enabled: bool | None = None,
        description: str | None = None,
        overwrite: _build.OverwriteArg | None = None,
        allow_incomplete_facts: bool | None = None,
        trigger: policyfields.TriggerArg | None = None,
        platforms: Iterable[str] | None = None,
        keep_newest: int | None = None,
        deletions: _build.DeletionsArg | None = None,
        copy_referrers: Iterable[str] | None = None,
        signature_wait: policyfields.DurationArg | None = None,
        validate_only: bool = False,
        apply: bool = False,
    ) -> policy_pb2.Policy | PolicyApplied:
        """Create a policy from a message and/or fields.

        The policy reads pushes to `source_endpoint` in `source_repository` (exact or a glob
        such as "team/**"; required) and copies matches to `endpoint`/`repository` (which may
        use `{repository}` and `{path}`). `overwrite`: "always" (default) or "never".
        Built from keywords alone, the policy is enabled unless `enabled=False`.

        `trigger`: "push" (the default: registry events and notify_push), "manual" (only
        apply), or a schedule for a pull mirror: {"schedule": {"interval": "30s", "jitter":
        "5s"}} or {"schedule": {"cron": "*/5 * * * *"}} (see `mirror.policyfields.schedule`).
        `platforms`: copy only these of an index ("linux/amd64"); `keep_newest`: only the
        newest K matching tags of each repository; `deletions`: "off" (default), "propagate"
        (a tag deleted at the source is deleted at the destination, if this policy wrote it)
        or "dry_run"; `copy_referrers`: "signatures", "attestations", "sboms" or "all";
        `signature_wait`: how long an unsigned image waits for a signature a `signed`/
        `signed_by` rule needs ("10m", seconds or a timedelta).

        Save acts on pushes from now on; `apply=True` (Save & Apply) also mirrors the matching
        tags already there (GatewayService.ApplyPolicy) and returns `PolicyApplied(policy,
        applied)`. When the apply call fails, its error is raised and the policy stays saved.
        """
        if apply and validate_only:
            raise ValueError("apply=True and validate_only=True exclude each other")
        fields = {
            "name": name, "source_endpoint": source_endpoint,
            "source_repository": source_repository, "rule": rule, "endpoint": endpoint,
            "repository": repository, "tag_template": tag_template, "time_zone": time_zone,
            "enabled": enabled, "description": description, "overwrite": overwrite,
            "allow_incomplete_facts": allow_incomplete_facts, "trigger": trigger,
            "platforms": platforms, "keep_newest": keep_newest, "deletions": deletions,
            "copy_referrers": copy_referrers, "signature_wait": signature_wait,
        }
        created = self._call("CreatePolicy", _build.create_policy(policy, fields, validate_only))
        if not apply:
            return created  # type: ignore[no-any-return]
        return self._then(created, self._apply_created)  # type: ignore[no-any-return]

    def _apply_created(self, policy: policy_pb2.Policy) -> Any:
        if self._gateway is None:
            raise RuntimeError("apply=True needs a client with a gateway (mirror.client.connect)")
        return self._then(
            self._gateway.apply_policy(policy.id), lambda applied: PolicyApplied(policy, applied)
        )

    def get(self, id: str) -> policy_pb2.Policy:
        """One policy by id; NotFound when there is none."""
        return self._call("GetPolicy", policy_pb2.GetPolicyRequest(id=id))

    def get_by_name(self, name: str) -> policy_pb2.Policy:
        """One policy by its (unique) name; NotFound when there is none."""
        return self._call("GetPolicy", policy_pb2.GetPolicyRequest(name=name))

    def list(
        self, *, page_size: int = 0, page_token: str = "", source_repository: str = "",
        source_endpoint: str = "", endpoint: str = "", trigger: str = "",
    ) -> policy_pb2.ListPoliciesResponse:
        """One page of policies; see `iter` for all of them. `source_repository`: those whose
        source names or matches it; `source_endpoint`: those reading that endpoint;
        `endpoint`: those using it as source or target; `trigger`: "push", "schedule" or
        "manual"."""
        req = policy_pb2.ListPoliciesRequest(
            page_size=page_size, page_token=page_token, source_repository=source_repository,
            source_endpoint=source_endpoint, endpoint=endpoint, trigger=trigger,
        )
        return self._call("ListPolicies", req)

    def iter(
        self, *, source_repository: str = "", source_endpoint: str = "", endpoint: str = "",
        trigger: str = "", page_size: int = 0,
    ) -> Iterator[policy_pb2.Policy]:
        """Every policy (filtered as `list`), following page tokens."""
        return self._pages(
            self.list, "policies", page_size=page_size, source_repository=source_repository,
            source_endpoint=source_endpoint, endpoint=endpoint, trigger=trigger,
        )

    def update(
        self,
        id: str,
        *,
        etag: str = "",
        name: str | None = None,
        source_endpoint: str | None = None,
        source_repository: str | None = None,
        rule: str | None = None,
        endpoint: str | None = None,
        repository: str | None = None,
        tag_template: str | None = None,
        time_zone: str | None = None,
        enabled: bool | None = None,
        description: str | None = None,
        overwrite: _build.OverwriteArg | None = None,
        allow_incomplete_facts: bool | None = None,
        trigger: policyfields.TriggerArg | None = None,
        platforms: Iterable[str] | None = None,
        keep_newest: int | None = None,
        deletions: _build.DeletionsArg | None = None,
        copy_referrers: Iterable[str] | None = None,
        signature_wait: policyfields.DurationArg | None = None,
    ) -> policy_pb2.Policy:
        """Change the fields given (others keep their value); a stale `etag` raises Aborted.
        The settings take the forms `create` takes (`platforms=[]` clears the list).

        Enabling a policy acts on pushes from then on (it does not backfill: `Gateway.apply_policy`
        does)."""
        fields = {
            "name": name, "source_endpoint": source_endpoint,
            "source_repository": source_repository, "rule": rule, "endpoint": endpoint,
            "repository": repository, "tag_template": tag_template, "time_zone": time_zone,
            "enabled": enabled, "description": description, "overwrite": overwrite,
            "allow_incomplete_facts": allow_incomplete_facts, "trigger": trigger,
            "platforms": platforms, "keep_newest": keep_newest, "deletions": deletions,
            "copy_referrers": copy_referrers, "signature_wait": signature_wait,
        }
        return self._call("UpdatePolicy", _build.update_policy(id, etag, fields))

    def replace(self, policy: policy_pb2.Policy) -> policy_pb2.Policy:
        """Replace every mutable field with those of `policy` (empty update mask)."""
        return self._call("UpdatePolicy", policy_pb2.UpdatePolicyRequest(policy=policy))

    def delete(self, id: str, *, etag: str = "") -> None:
        """Delete a policy; with `etag`, only if it is still that version (else Aborted)."""
        req = policy_pb2.DeletePolicyRequest(id=id, etag=etag)
        return self._call("DeletePolicy", req, void=True)

    def validate_rule(
        self, rule: str, *, tag_template: str = "", time_zone: str = "", example_tag: str = ""
    ) -> policy_pb2.ValidateRuleResponse:
        """Compile a rule (and a tag template) without saving; errors carry line and column.
        With `example_tag`, the answer's `tag_preview` is the tag `tag_template` ("" is "%n")
        makes now for that source tag in `time_zone` (empty when `template_errors` has any)."""
        req = policy_pb2.ValidateRuleRequest(
            rule=rule, tag_template=tag_template, time_zone=time_zone, example_tag=example_tag
        )
        return self._call("ValidateRule", req)

    def evaluate(
        self, facts: _build.FactsArg, *, endpoint: str, explain: bool = False,
        evaluation_time: dt.datetime | None = None,
    ) -> policy_pb2.EvaluateResponse:
        """Evaluate every enabled policy reading `endpoint` whose source matches
        `facts.repository`."""
        return self._call(
            "Evaluate", _build.evaluate(facts, endpoint, explain, evaluation_time)
        )

    def evaluate_rule(self, rule: str, facts: _build.FactsArg) -> policy_pb2.EvaluateRuleResponse:
        """Evaluate one rule against facts, with each clause's value and result."""
        req = policy_pb2.EvaluateRuleRequest(rule=rule, facts=_build.facts(facts))
        return self._call("EvaluateRule", req)

    def get_fact_requirements(
        self, repository: str, *, endpoint: str
    ) -> policy_pb2.FactRequirements:
        """Which fact kinds the enabled policies reading `endpoint`/`repository` need."""
        req = policy_pb2.GetFactRequirementsRequest(repository=repository, endpoint=endpoint)
        return self._call("GetFactRequirements", req)

    def create_trusted_key(self, *, name: str, public_key_pem: str) -> policy_pb2.TrustedKey:
        """Register a public key (PEM SubjectPublicKeyInfo, ECDSA P-256 or Ed25519) under
        `name`, for `signed_by "NAME"` rules; the answer carries its algorithm and
        fingerprint. AlreadyExists when the name is taken."""
        key = policy_pb2.TrustedKey(name=name, public_key_pem=public_key_pem)
        return self._call("CreateTrustedKey", policy_pb2.CreateTrustedKeyRequest(key=key))

    def get_trusted_key(self, name: str) -> policy_pb2.TrustedKey:
        """One trusted key by name; NotFound when there is none."""
        return self._call("GetTrustedKey", policy_pb2.GetTrustedKeyRequest(name=name))

    def list_trusted_keys(
        self, *, page_size: int = 0, page_token: str = ""
    ) -> policy_pb2.ListTrustedKeysResponse:
        """One page of trusted keys, by name; see `iter_trusted_keys` for all of them."""
        req = policy_pb2.ListTrustedKeysRequest(page_size=page_size, page_token=page_token)
        return self._call("ListTrustedKeys", req)

    def iter_trusted_keys(self, *, page_size: int = 0) -> Iterator[policy_pb2.TrustedKey]:
        """Every trusted key, following page tokens."""
        return self._pages(self.list_trusted_keys, "keys", page_size=page_size)

    def delete_trusted_key(self, name: str) -> None:
        """Remove a trusted key; FailedPrecondition naming the policies whose rules use it."""
        req = policy_pb2.DeleteTrustedKeyRequest(name=name)
        return self._call("DeleteTrustedKey", req, void=True)


class Transfers(_Service):
    """TransferService: endpoints (registries and credentials) and transfer jobs."""

    def create_endpoint(
        self,
        endpoint: transfer_pb2.Endpoint | None = None,
        *,
        name: str | None = None,
        url: str | None = None,
        username: str | None = None,
        secret: str | None = None,
        ca_pem: str | None = None,
        insecure_skip_verify: bool | None = None,
        max_concurrency: int | None = None,
        requests_per_second: float | None = None,
        scan_on_push: bool | None = None,
        aliases: Iterable[str] | None = None,
        webhook_secret: str | None = None,
        validate_only: bool = False,
    ) -> transfer_pb2.Endpoint:
        """Register a registry; the secret and the webhook secret (the bearer token its push
        notifications must carry) are stored and never returned (see has_secret,
        has_webhook_secret). `validate_only` checks it as the server would and stores
        nothing."""
        fields = {
            "url": url, "username": username, "secret": secret, "ca_pem": ca_pem,
            "insecure_skip_verify": insecure_skip_verify, "max_concurrency": max_concurrency,
            "requests_per_second": requests_per_second, "scan_on_push": scan_on_push,
            "aliases": aliases, "webhook_secret": webhook_secret,
        }
        req = _build.create_endpoint(endpoint, name, fields)
        req.validate_only = validate_only
        return self._call("CreateEndpoint", req)

    def get_endpoint(self, name: str) -> transfer_pb2.Endpoint:
        """One endpoint by name (never its secrets); NotFound when there is none."""
        return self._call("GetEndpoint", transfer_pb2.GetEndpointRequest(name=name))

    def list_endpoints(
        self, *, page_size: int = 0, page_token: str = ""
    ) -> transfer_pb2.ListEndpointsResponse:
        """One page of endpoints; see `iter_endpoints` for all of them."""
        req = transfer_pb2.ListEndpointsRequest(page_size=page_size, page_token=page_token)
        return self._call("ListEndpoints", req)

    def iter_endpoints(self, *, page_size: int = 0) -> Iterator[transfer_pb2.Endpoint]:
        """Every endpoint, following page tokens."""
        return self._pages(self.list_endpoints, "endpoints", page_size=page_size)

    def update_endpoint(
        self,
        name: str,
        *,
        url: str | None = None,
        username: str | None = None,
        secret: str | None = None,
        ca_pem: str | None = None,
        insecure_skip_verify: bool | None = None,
        max_concurrency: int | None = None,
        requests_per_second: float | None = None,
        scan_on_push: bool | None = None,
        aliases: Iterable[str] | None = None,
        webhook_secret: str | None = None,
        validate_only: bool = False,
    ) -> transfer_pb2.Endpoint:
        """Change the fields given; the others keep their value (`aliases` replaces the list).
        `validate_only` checks the result as the server would and stores nothing."""
        fields = {
            "url": url, "username": username, "secret": secret, "ca_pem": ca_pem,
            "insecure_skip_verify": insecure_skip_verify, "max_concurrency": max_concurrency,
            "requests_per_second": requests_per_second, "scan_on_push": scan_on_push,
            "aliases": aliases, "webhook_secret": webhook_secret,
        }
        req = _build.update_endpoint(name, fields)
        req.validate_only = validate_only
        return self._call("UpdateEndpoint", req)

    def delete_endpoint(self, name: str) -> None:
        """Remove an endpoint; FailedPrecondition naming the policies while any uses it."""
        req = transfer_pb2.DeleteEndpointRequest(name=name)
        return self._call("DeleteEndpoint", req, void=True)

    def test_connection(
        self, endpoint: str, *, repository: str = "", check_push: bool = False
    ) -> transfer_pb2.TestConnectionResponse:
        """Reachability, TLS, authentication, pull (and push) permission, step by step."""
        req = transfer_pb2.TestConnectionRequest(
            endpoint=endpoint, repository=repository, check_push=check_push
        )
        return self._call("TestConnection", req)

    def stream_connection_test(
        self, endpoint: str, *, repository: str = "", check_push: bool = False
    ) -> Iterator[transfer_pb2.ConnectionCheck]:
        """`test_connection`, streamed: each step as soon as it completes, then the ones
        skipped."""
        req = transfer_pb2.TestConnectionRequest(
            endpoint=endpoint, repository=repository, check_push=check_push
        )
        return self._stream("StreamConnectionTest", req)

    def list_repositories(
        self, endpoint: str, *, page_size: int = 0, page_token: str = "", prefix: str = ""
    ) -> transfer_pb2.ListRepositoriesResponse:
        """One page of the registry's catalog, in name order (only names starting with
        `prefix`); FailedPrecondition (reason CATALOG_UNAVAILABLE) when the registry refuses
        to list; see `iter_repositories` for all of them."""
        req = transfer_pb2.ListRepositoriesRequest(
            endpoint=endpoint, page_size=page_size, page_token=page_token, prefix=prefix
        )
        return self._call("ListRepositories", req)

    def iter_repositories(
        self, endpoint: str, *, prefix: str = "", page_size: int = 0
    ) -> Iterator[str]:
        """Every repository of the registry's catalog, following page tokens."""
        return self._pages(
            self.list_repositories, "repositories", endpoint=endpoint, prefix=prefix,
            page_size=page_size,
        )

    def start(
        self,
        *,
        source_endpoint: str,
        source_repository: str,
        source_reference: str,
        destination_endpoint: str,
        destination_repository: str,
        destination_tag: str = "",
        platforms: Iterable[str] = (),
        fail_if_tag_exists: bool = False,
        source_tag: str = "",
        idempotency_key: str = "",
        copy_referrers: Iterable[str] = (),
    ) -> transfer_pb2.Transfer:
        """Start copying an image; returns at once with the job (see `watch`).

        `source_reference` is a tag or a digest ("sha256:..."); `source_tag`: write the
        destination tag only if this source tag still points at the copied digest (else the
        job ends SUPERSEDED); `copy_referrers`: also copy its "signatures", "attestations",
        "sboms" or "all" after it (the job's `referrers` lists them)."""
        req = _build.start_transfer(
            source_endpoint=source_endpoint, source_repository=source_repository,
            source_reference=source_reference, destination_endpoint=destination_endpoint,
            destination_repository=destination_repository, destination_tag=destination_tag,
            platforms=platforms, fail_if_tag_exists=fail_if_tag_exists, source_tag=source_tag,
            idempotency_key=idempotency_key, copy_referrers=copy_referrers,
        )
        return self._call("StartTransfer", req)

    def get(self, id: str) -> transfer_pb2.Transfer:
        """One transfer job by id; NotFound when there is none."""
        return self._call("GetTransfer", transfer_pb2.GetTransferRequest(id=id))

    def list(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        states: Iterable[int | str] = (),
        destination_endpoint: str = "",
        repository: str = "",
    ) -> transfer_pb2.ListTransfersResponse:
        """One page of transfers; states by value or name ("running")."""
        req = _build.list_transfers(
            page_size=page_size, page_token=page_token, states=states,
            destination_endpoint=destination_endpoint, repository=repository,
        )
        return self._call("ListTransfers", req)

    def iter(
        self,
        *,
        states: Iterable[int | str] = (),
        destination_endpoint: str = "",
        repository: str = "",
        page_size: int = 0,
    ) -> Iterator[transfer_pb2.Transfer]:
        """Every transfer (filtered as `list`), following page tokens."""
        return self._pages(
            self.list, "transfers", page_size=page_size, states=list(states),
            destination_endpoint=destination_endpoint, repository=repository,
        )

    def watch(self, id: str, final_only: bool = False) -> Iterator[transfer_pb2.Transfer]:
        """The transfer's progress, one snapshot per change, until it reaches a final state
        (`final_only`: the snapshot at the start and the final one, nothing in between)."""
        return self._stream(
            "WatchTransfer", transfer_pb2.WatchTransferRequest(id=id, final_only=final_only)
        )

    def cancel(self, id: str) -> transfer_pb2.Transfer:
        """Cancel a waiting or running transfer; returns the job as it is then."""
        return self._call("CancelTransfer", transfer_pb2.CancelTransferRequest(id=id))


class Gateway(_Service):
    """GatewayService: push notifications, policy runs and status, apply and reconcile."""

    def notify_push(
        self, *, endpoint: str, repository: str, tag: str, digest: str = "", event_id: str = ""
    ) -> gateway_pb2.NotifyPushResponse:
        """Report a push (for registries or CI systems without webhooks); the policies reading
        `endpoint`/`repository` act on it. A repeated `event_id` is a duplicate."""
        req = gateway_pb2.NotifyPushRequest(
            endpoint=endpoint, repository=repository, tag=tag, digest=digest, event_id=event_id
        )
        return self._call("NotifyPush", req)

    def list_runs(
        self,
        *,
        policy_id: str = "",
        states: Iterable[int | str] = (),
        page_size: int = 0,
        page_token: str = "",
    ) -> gateway_pb2.ListRunsResponse:
        """One page of runs, newest first; states by value or name ("failed", "blocked")."""
        req = _build.list_runs(
            policy_id=policy_id, states=states, page_size=page_size, page_token=page_token
        )
        return self._call("ListRuns", req)

    def iter_runs(
        self, *, policy_id: str = "", states: Iterable[int | str] = (), page_size: int = 0
    ) -> Iterator[gateway_pb2.Run]:
        """Every run (filtered as `list_runs`), following page tokens."""
        return self._pages(
            self.list_runs, "runs", policy_id=policy_id, states=list(states), page_size=page_size
        )

    def get_policy_status(self, policy_id: str) -> gateway_pb2.PolicyStatus:
        """A policy's run counts and last run."""
        req = gateway_pb2.GetPolicyStatusRequest(policy_id=policy_id)
        return self._call("GetPolicyStatus", req)

    def apply_policy(self, policy_id: str) -> gateway_pb2.ApplyPolicyResponse:
        """Evaluate the tags already in the policy's source repository and mirror matches
        (the Apply of DTR's Save & Apply). Endpoints it could not read are in `errors`."""
        return self._call("ApplyPolicy", gateway_pb2.ApplyPolicyRequest(policy_id=policy_id))

    def reconcile(self, policy_id: str = "") -> gateway_pb2.ReconcileResponse:
        """Act on pushes that lost events missed since each policy was created or last
        applied (one policy, or all); never older tags. Endpoints it could not read are in
        `errors`."""
        return self._call("Reconcile", gateway_pb2.ReconcileRequest(policy_id=policy_id))

    def list_unplaced_events(self, *, page_size: int = 0) -> gateway_pb2.ListUnplacedEventsResponse:
        """Push events from hosts no endpoint is registered under, with the endpoint and the
        alias that would place them."""
        req = gateway_pb2.ListUnplacedEventsRequest(page_size=page_size)
        return self._call("ListUnplacedEvents", req)

    def list_polls(
        self, policy_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> gateway_pb2.ListPollsResponse:
        """One page of a scheduled policy's polls, newest first: tags listed, changed,
        copied, skipped, failed and deleted, and the registry requests each made."""
        req = gateway_pb2.ListPollsRequest(
            policy_id=policy_id, page_size=page_size, page_token=page_token
        )
        return self._call("ListPolls", req)

    def iter_polls(self, policy_id: str, *, page_size: int = 0) -> Iterator[gateway_pb2.Poll]:
        """Every poll of a policy (as `list_polls`), following page tokens."""
        return self._pages(self.list_polls, "polls", policy_id=policy_id, page_size=page_size)

    def prune_policy(
        self, policy_id: str, *, dry_run: bool = False
    ) -> gateway_pb2.PrunePolicyResponse:
        """Delete the destination tags this policy wrote that no longer match (their source
        tag is gone or fails the rule): one delete run each, or with `dry_run` one
        delete_dry_run run each and nothing deleted. `tags_kept` counts the others."""
        req = gateway_pb2.PrunePolicyRequest(policy_id=policy_id, dry_run=dry_run)
        return self._call("PrunePolicy", req)

    def create_subscription(
        self,
        *,
        url: str,
        event_types: Iterable[int | str] = (),
        policy_id: str = "",
        secret: str = "",
    ) -> gateway_pb2.Subscription:
        """POST outbound events to `url` (docs/events.md): `event_types` by value or name
        ("push_mirroring", "poll_mirroring", "tag_deletion"; none: every type), only of
        `policy_id` when given. Without `secret` the server makes one and returns it in this
        answer only (keep it: Get/List never show it)."""
        sub = gateway_pb2.Subscription(
            url=url,
            event_types=[_build._enum(gateway_pb2.EventType, t) for t in event_types],  # type: ignore[misc]
            policy_id=policy_id,
            secret=secret,
        )
        req = gateway_pb2.CreateSubscriptionRequest(subscription=sub)
        return self._call("CreateSubscription", req)

    def get_subscription(self, id: str) -> gateway_pb2.Subscription:
        """One subscription (`has_secret`, never the secret)."""
        return self._call("GetSubscription", gateway_pb2.GetSubscriptionRequest(id=id))

    def list_subscriptions(
        self, *, page_size: int = 0, page_token: str = ""
    ) -> gateway_pb2.ListSubscriptionsResponse:
        """One page of subscriptions, oldest first (--notify-url ones included)."""
        req = gateway_pb2.ListSubscriptionsRequest(page_size=page_size, page_token=page_token)
        return self._call("ListSubscriptions", req)

    def iter_subscriptions(self, *, page_size: int = 0) -> Iterator[gateway_pb2.Subscription]:
        """Every subscription, following page tokens."""
        return self._pages(self.list_subscriptions, "subscriptions", page_size=page_size)

    def delete_subscription(self, id: str) -> None:
        """Stop sending to a subscription; its delivery log goes with it."""
        req = gateway_pb2.DeleteSubscriptionRequest(id=id)
        return self._call("DeleteSubscription", req, void=True)

    def list_deliveries(
        self, subscription_id: str = "", *, page_size: int = 0, page_token: str = ""
    ) -> gateway_pb2.ListDeliveriesResponse:
        """One page of a subscription's delivery log (all when empty), newest first: state,
        attempts, last HTTP status and message of each event sent."""
        req = gateway_pb2.ListDeliveriesRequest(
            subscription_id=subscription_id, page_size=page_size, page_token=page_token
        )
        return self._call("ListDeliveries", req)

    def iter_deliveries(
        self, subscription_id: str = "", *, page_size: int = 0
    ) -> Iterator[gateway_pb2.Delivery]:
        """Every delivery of the log (as `list_deliveries`), following page tokens."""
        return self._pages(
            self.list_deliveries, "deliveries", subscription_id=subscription_id,
            page_size=page_size,
        )


class Scanner(_Service):
    """ScanService: components, licenses and vulnerabilities of images."""

    def scan_image(
        self, *, endpoint: str, repository: str, reference: str, force: bool = False
    ) -> scan_pb2.ScanReport:
        """Scan an image (components, licenses, vulnerabilities); cached per digest unless
        `force`."""
        req = _build.scan_image(
            endpoint=endpoint, repository=repository, reference=reference, force=force
        )
        return self._call("ScanImage", req)

    def get_scan(self, digest: str, *, repository: str = "") -> scan_pb2.ScanReport:
        """A cached report by manifest digest, the newest or that of one repository
        (a mirrored image has one per registry repository). NotFound when never scanned."""
        return self._call(
            "GetScan", scan_pb2.GetScanRequest(digest=digest, repository=repository)
        )

    def import_vulnerabilities(
        self, *, path: str | None = None, data: bytes | None = None
    ) -> scan_pb2.ImportVulnerabilitiesResponse:
        """Import OSV records: a path on the scanner's host, or the bytes themselves."""
        return self._call("ImportVulnerabilities", _build.import_vulnerabilities(path, data))

    def import_report(
        self, *, digest: str, report: bytes, format: str = "", repository: str = ""
    ) -> scan_pb2.ScanReport:
        """Store another scanner's report (CycloneDX, SPDX or Trivy JSON) for a digest."""
        req = scan_pb2.ImportReportRequest(
            digest=digest, report=report, format=format, repository=repository
        )
        return self._call("ImportReport", req)

    def vulndb_status(self) -> scan_pb2.VulnerabilityDatabaseStatus:
        """Sources, record counts and age of the vulnerability data (`loaded` is False when
        nothing was ever imported)."""
        req = scan_pb2.GetVulnerabilityDatabaseStatusRequest()
        return self._call("GetVulnerabilityDatabaseStatus", req)


class Client:
    """A connection to image-mirror: `.policies`, `.transfers`, `.gateway`, `.scanner`.

    One address serves every service in the embedded stack; give `addresses` per service
    ({"policies": "host:port", ...}) when they run apart. `rate_limit_wait`: seconds one call
    may spend waiting, as the server's RetryInfo asks, after rate-limit refusals
    (RESOURCE_EXHAUSTED) before the error is raised (0, the default: raised at once).
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        tls: TlsArg = False,
        token: str | None = None,
        timeout: float | None = 60.0,
        addresses: dict[str, str] | None = None,
        rate_limit_wait: float = 0.0,
    ) -> None:
        metadata = auth_metadata(token)
        self.address = address
        self._channels = ChannelPool(address, addresses, lambda addr: sync_channel(addr, tls))
        self.channel = self._channels.channel("policies")
        stub = self._channels.stub
        w = rate_limit_wait
        self.policies = Policies(stub("policies"), metadata, timeout, w)
        self.transfers = Transfers(stub("transfers"), metadata, timeout, w)
        self.gateway = Gateway(stub("gateway"), metadata, timeout, w)
        self.scanner = Scanner(stub("scanner"), metadata, timeout, w)
        self.policies._gateway = self.gateway  # Save & Apply calls both services
        self.metadata = metadata

    def close(self) -> None:
        """Close every channel the client opened."""
        for ch in self._channels.opened():
            ch.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    address: str = DEFAULT_ADDRESS,
    *,
    tls: TlsArg = False,
    token: str | None = None,
    timeout: float | None = 60.0,
    addresses: dict[str, str] | None = None,
    rate_limit_wait: float = 0.0,
) -> Client:
    """Open a client. `tls`: False (plaintext), True (system CAs) or TlsOptions (CA, mTLS);
    `rate_limit_wait`: see `Client`."""
    return Client(address, tls=tls, token=token, timeout=timeout, addresses=addresses,
                  rate_limit_wait=rate_limit_wait)


# Re-exported so callers need only this module for the common messages.
ImageFacts = common_pb2.ImageFacts
