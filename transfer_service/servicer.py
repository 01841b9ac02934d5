"""gRPC servicer of mirror.v1.TransferService: endpoints, TestConnection, transfers."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from google.protobuf import empty_pb2
from grpc import aio
from mirror.v1 import transfer_pb2, transfer_pb2_grpc

from registry_client import errors as rc_errors
from registry_client.names import reference_problem, repository_problem, tag_problem
from servicekit import paging
from servicekit.diskfull import disk_full_as_exhausted
from servicekit.errors import failed_precondition, invalid_argument
from transfer_service.connection_check import ConnectionReport, StepResult, check_connection
from transfer_service.convert import (
    STATE_FROM_PROTO,
    endpoint_from_proto,
    endpoint_to_proto,
    transfer_to_proto,
)
from transfer_service.endpoints import WRITABLE_FIELDS, EndpointStore
from transfer_service.engine.referrers import CHOICES as REFERRER_CHOICES
from transfer_service.jobs import JobSpec, Journal
from transfer_service.policy_refs import PolicyRefs
from transfer_service.referrer_reads import read_referrers
from transfer_service.registry_reads import RegistryReads
from transfer_service.schema import open_database
from transfer_service.secrets import load_secret_box
from transfer_service.tag_delete import delete_tag
from transfer_service.worker import Worker

log = logging.getLogger("transfer_service")

P = ParamSpec("P")
R = TypeVar("R")

PLATFORM_RE = re.compile(r"[a-z0-9_.-]+/[a-z0-9_.-]+(?:/[a-z0-9_.-]+)?")
MAX_IDEMPOTENCY_KEY = 256
OUTPUT_ONLY = ("has_secret", "has_webhook_secret", "create_time", "update_time")


class TransferServicer(transfer_pb2_grpc.TransferServiceServicer):
    """Mountable servicer (servicekit `Mountable`); `start()`/`stop()` run its worker."""

    service_name = transfer_pb2.DESCRIPTOR.services_by_name["TransferService"].full_name

    def __init__(
        self,
        endpoints: EndpointStore,
        journal: Journal,
        worker: Worker,
        policy_channel: aio.Channel | None = None,
        volume: Path | None = None,
    ) -> None:
        """`volume`: the data folder (named when a write hits ENOSPC); default: the folder of
        the SQLite database."""
        self.endpoints = endpoints
        self.journal = journal
        self.worker = worker
        # Asked before an endpoint is deleted; None: no policy service in this deployment.
        self.policy_refs = PolicyRefs(policy_channel) if policy_channel is not None else None
        self._volume = volume if volume is not None else journal.path.parent
        self._close: list[Any] = []

    async def _db(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """Store code off the event loop, on the database's threads."""
        return await self.journal.db.run(fn, *args, **kwargs)

    @classmethod
    def open(
        cls,
        data_dir: str | Path,
        *,
        key_file: str | Path | None = None,
        spool_dir: str | Path | None = None,
        spool_threshold: int = 64 << 20,
        spool_quota: int | None = None,
        max_jobs: int = 16,
        max_concurrent_blobs: int = 8,
        max_attempts: int = 5,
        backoff_base: float = 1.0,
        progress_interval: float = 1.0,
        max_jobs_per_endpoint: int | None = None,
        reschedule_base: float = 60.0,
        reschedule_max: float = 6 * 3600.0,
        policy_channel: aio.Channel | None = None,
        idle_timeout: float | None = None,
        retry_after_cap: float | None = None,
        database: str = "",
        worker_id: str | None = None,
        lease_seconds: float = 30.0,
        poll_interval: float = 0.5,
    ) -> TransferServicer:
        """Open the database (DATA/transfer.db, or `database`: a postgresql:// URL shared by
        every transfer worker) and the secret key (env or key file) and build the worker.

        `policy_channel`: a channel to the policy service, asked before DeleteEndpoint (the
        stack passes its own channel; `python -m transfer_service --policy-address`).
        `idle_timeout`, `retry_after_cap`: of every registry client (None: the client's
        defaults, 30 s and 60 s); a longer Retry-After reschedules the job instead.
        `worker_id`, `lease_seconds`, `poll_interval`: of the worker (transfer_service.worker).
        Workers sharing a database must share the key (MIRROR_SECRET_KEY or `key_file`).
        """
        from transfer_service.engine import CopyEngine

        data = Path(data_dir)
        data.mkdir(parents=True, exist_ok=True)
        box = load_secret_box(Path(key_file) if key_file else data / "secret.key")
        db = open_database(data, database)
        endpoints = EndpointStore(
            db, box, idle_timeout=idle_timeout, retry_after_cap=retry_after_cap
        )
        endpoints.check_key()
        journal = Journal(db)
        spool = Path(spool_dir) if spool_dir else data / "spool"
        spool.mkdir(parents=True, exist_ok=True)
        _clear_stale_spool(spool)
        engine_kw: dict[str, Any] = {
            "spool_threshold": spool_threshold,
            "max_concurrent_blobs": max_concurrent_blobs,
        }
        if spool_quota is not None:
            engine_kw["spool_quota"] = spool_quota
        engine = CopyEngine(spool, **engine_kw)
        worker = Worker(
            journal,
            endpoints,
            engine,
            max_jobs=max_jobs,
            max_attempts=max_attempts,
            backoff_base=backoff_base,
            progress_interval=progress_interval,
            max_jobs_per_endpoint=max_jobs_per_endpoint,
            reschedule_base=reschedule_base,
            reschedule_max=reschedule_max,
            worker_id=worker_id,
            lease_seconds=lease_seconds,
            poll_interval=poll_interval,
        )
        servicer = cls(endpoints, journal, worker, policy_channel=policy_channel, volume=data)
        if policy_channel is None:
            log.warning(
                "no policy service configured: DeleteEndpoint cannot check which policies "
                "use an endpoint"
            )
        servicer._close.append(db)
        return servicer

    def mount(self, server: aio.Server) -> None:
        transfer_pb2_grpc.add_TransferServiceServicer_to_server(self, server)

    async def start(self) -> None:
        await self.worker.start()

    async def stop(self) -> None:
        await self.worker.stop()
        for c in self._close:
            c.close()
        self._close.clear()

    # -- endpoints ----------------------------------------------------------------------

    async def CreateEndpoint(
        self, request: transfer_pb2.CreateEndpointRequest, context: aio.ServicerContext
    ) -> transfer_pb2.Endpoint:
        if not request.HasField("endpoint"):
            raise invalid_argument("endpoint is required", [("endpoint", "required")])
        _reject_output_only(request.endpoint)
        if request.validate_only:
            ep = await self._db(
                self.endpoints.create, endpoint_from_proto(request.endpoint), True
            )
            return endpoint_to_proto(ep)
        with disk_full_as_exhausted(self._volume):
            ep = await self._db(self.endpoints.create, endpoint_from_proto(request.endpoint))
        log.info("endpoint %s created (%s)", ep.name, ep.url)
        return endpoint_to_proto(ep)

    async def GetEndpoint(
        self, request: transfer_pb2.GetEndpointRequest, context: aio.ServicerContext
    ) -> transfer_pb2.Endpoint:
        _require(request.name, "name")
        return endpoint_to_proto(await self._db(self.endpoints.get, request.name))

    async def ListEndpoints(
        self, request: transfer_pb2.ListEndpointsRequest, context: aio.ServicerContext
    ) -> transfer_pb2.ListEndpointsResponse:
        size = paging.page_size(request.page_size)
        state = paging.decode_token(request.page_token, expect={"kind": "endpoints"})
        after = str(state.get("after", ""))
        items = await self._db(self.endpoints.list, size + 1, after)
        resp = transfer_pb2.ListEndpointsResponse(
            endpoints=[endpoint_to_proto(e) for e in items[:size]]
        )
        if len(items) > size:
            resp.next_page_token = paging.encode_token(
                {"kind": "endpoints", "after": items[size - 1].name}
            )
        return resp

    async def UpdateEndpoint(
        self, request: transfer_pb2.UpdateEndpointRequest, context: aio.ServicerContext
    ) -> transfer_pb2.Endpoint:
        msg = request.endpoint
        _require(msg.name, "endpoint.name")
        changes = _changes_from_mask(msg, list(request.update_mask.paths))
        before = await self._db(self.endpoints.get, msg.name)
        if request.validate_only:
            ep = await self._db(self.endpoints.update, msg.name, changes, True)
            return endpoint_to_proto(ep)
        with disk_full_as_exhausted(self._volume):
            ep = await self._db(self.endpoints.update, msg.name, changes)
        log.info("endpoint %s updated (%s)", ep.name, ", ".join(sorted(changes)) or "nothing")
        if before.has_secret and not ep.has_secret and "secret" not in changes:
            log.warning(
                "endpoint %s: the URL now names another registry; its stored secret was "
                "cleared (set the secret again for the new registry)", ep.name,
            )
        return endpoint_to_proto(ep)

    async def DeleteEndpoint(
        self, request: transfer_pb2.DeleteEndpointRequest, context: aio.ServicerContext
    ) -> empty_pb2.Empty:
        _require(request.name, "name")
        await self._db(self.endpoints.get, request.name)  # NOT_FOUND first
        busy = [
            j.id
            for j in await self._db(self.journal.unfinished)
            if request.name in (j.spec.src_endpoint, j.spec.dst_endpoint)
        ]
        if busy:
            raise failed_precondition(
                f"endpoint {request.name!r} is used by {len(busy)} unfinished transfer(s); "
                "cancel them or wait for them to finish",
                [("TRANSFER", f"transfers/{i}", "waiting or running") for i in busy[:10]],
                reason="ENDPOINT_IN_USE",
            )
        if self.policy_refs is not None:
            policies = await self.policy_refs.using(request.name)  # UNAVAILABLE: not deleted
            if policies:
                raise failed_precondition(
                    f"endpoint {request.name!r} is used by {len(policies)} polic"
                    f"{'y' if len(policies) == 1 else 'ies'} ({', '.join(policies[:5])}); "
                    "change or delete them first",
                    [("POLICY", f"policies/{n}", "uses the endpoint as source or target")
                     for n in policies[:20]],
                    reason="ENDPOINT_IN_USE",
                )
        with disk_full_as_exhausted(self._volume):
            await self._db(self.endpoints.delete, request.name)
        log.info("endpoint %s deleted", request.name)
        return empty_pb2.Empty()

    async def VerifyWebhookSecret(
        self, request: transfer_pb2.VerifyWebhookSecretRequest, context: aio.ServicerContext
    ) -> transfer_pb2.VerifyWebhookSecretResponse:
        _require(request.endpoint, "endpoint")
        ok, has = await self._db(
            self.endpoints.verify_webhook_secret, request.endpoint, request.secret
        )
        return transfer_pb2.VerifyWebhookSecretResponse(ok=ok, has_webhook_secret=has)

    async def DeleteTag(
        self, request: transfer_pb2.DeleteTagRequest, context: aio.ServicerContext
    ) -> transfer_pb2.DeleteTagResponse:
        violations = []
        for field, problem in (
            ("endpoint", "" if request.endpoint else "required"),
            ("repository", repository_problem(request.repository)),
            ("tag", tag_problem(request.tag)),
            ("digest", reference_problem(request.digest) if request.digest else "required"),
        ):
            if problem:
                violations.append((field, problem))
        if violations:
            raise invalid_argument("the request is not valid", violations)
        async with self.endpoints.client_for(request.endpoint) as rc:  # NOT_FOUND
            deleted = await delete_tag(rc, request.repository, request.tag, request.digest)
        if deleted:
            log.info(
                "deleted %s:%s (%s) on endpoint %s",
                request.repository, request.tag, request.digest, request.endpoint,
            )
        return transfer_pb2.DeleteTagResponse(deleted=deleted)

    # -- registry reads for the gateway and the scanner (transfer_service.registry_reads) ----

    async def HeadManifest(
        self, request: transfer_pb2.ReadManifestRequest, context: aio.ServicerContext
    ) -> transfer_pb2.ManifestHead:
        return await RegistryReads(self.endpoints.client_for).head_manifest(request)

    async def ReadManifest(
        self, request: transfer_pb2.ReadManifestRequest, context: aio.ServicerContext
    ) -> transfer_pb2.ManifestContent:
        return await RegistryReads(self.endpoints.client_for).read_manifest(request)

    async def ReadBlob(
        self, request: transfer_pb2.ReadBlobRequest, context: aio.ServicerContext
    ) -> AsyncIterator[transfer_pb2.BlobChunk]:
        async for chunk in RegistryReads(self.endpoints.client_for).read_blob(request):
            yield chunk

    async def ReadTags(
        self, request: transfer_pb2.ReadTagsRequest, context: aio.ServicerContext
    ) -> AsyncIterator[transfer_pb2.TagPage]:
        async for page in RegistryReads(self.endpoints.client_for).read_tags(request):
            yield page

    async def ReadReferrers(
        self, request: transfer_pb2.ReadReferrersRequest, context: aio.ServicerContext
    ) -> transfer_pb2.ReferrersList:
        return await read_referrers(self.endpoints.client_for, request)

    async def TestConnection(
        self, request: transfer_pb2.TestConnectionRequest, context: aio.ServicerContext
    ) -> transfer_pb2.TestConnectionResponse:
        violations = []
        if not request.endpoint:
            violations.append(("endpoint", "required"))
        problem = repository_problem(request.repository)
        if problem:
            violations.append(("repository", problem))
        if violations:
            raise invalid_argument("the request is not valid", violations)
        cfg = await self._db(self.endpoints.config_for, request.endpoint)  # NOT_FOUND
        report = await check_connection(cfg, request.repository, request.check_push)
        return transfer_pb2.TestConnectionResponse(
            ok=report.ok,
            checks=[_check(c) for c in report.checks],
        )

    async def StreamConnectionTest(
        self, request: transfer_pb2.TestConnectionRequest, context: aio.ServicerContext
    ) -> AsyncIterator[transfer_pb2.ConnectionCheck]:
        violations = []
        if not request.endpoint:
            violations.append(("endpoint", "required"))
        problem = repository_problem(request.repository)
        if problem:
            violations.append(("repository", problem))
        if violations:
            raise invalid_argument("the request is not valid", violations)
        cfg = await self._db(self.endpoints.config_for, request.endpoint)  # NOT_FOUND
        steps: asyncio.Queue[StepResult | None] = asyncio.Queue()

        async def run() -> ConnectionReport:
            try:
                return await check_connection(
                    cfg, request.repository, request.check_push, on_step=steps.put_nowait
                )
            finally:
                steps.put_nowait(None)

        task = asyncio.create_task(run())
        sent: set[int] = set()
        try:
            while (step := await steps.get()) is not None:
                sent.add(int(step.step))
                yield _check(step)
            for step in (await task).checks:
                if int(step.step) not in sent:
                    yield _check(step)
        finally:
            task.cancel()

    async def ListRepositories(
        self, request: transfer_pb2.ListRepositoriesRequest, context: aio.ServicerContext
    ) -> transfer_pb2.ListRepositoriesResponse:
        _require(request.endpoint, "endpoint")
        async with self.endpoints.client_for(request.endpoint) as rc:  # NOT_FOUND
            try:
                names = await rc.list_repositories()
            except rc_errors.RegistryError as exc:
                raise failed_precondition(
                    f"the registry of endpoint {request.endpoint} does not list its "
                    f"repositories: {exc}",
                    reason="CATALOG_UNAVAILABLE",
                ) from exc
        after = paging.decode_token(request.page_token, expect={"e": request.endpoint}).get("a", "")
        chosen = sorted(n for n in names if n.startswith(request.prefix) and n > str(after))
        size = paging.page_size(request.page_size)
        nxt = ""
        if len(chosen) > size:
            chosen = chosen[:size]
            nxt = paging.encode_token({"e": request.endpoint, "a": chosen[-1]})
        return transfer_pb2.ListRepositoriesResponse(repositories=chosen, next_page_token=nxt)

    # -- transfers ----------------------------------------------------------------------

    async def StartTransfer(
        self, request: transfer_pb2.StartTransferRequest, context: aio.ServicerContext
    ) -> transfer_pb2.Transfer:
        spec = _validate_start(request)
        missing = sorted(
            {
                n
                for n in (spec.src_endpoint, spec.dst_endpoint)
                if not await self._db(self.endpoints.exists, n)
            }
        )
        if missing:
            raise failed_precondition(
                f"unknown endpoint(s): {', '.join(missing)}; create them first",
                [("ENDPOINT", f"endpoints/{n}", "does not exist") for n in missing],
                reason="ENDPOINT_NOT_FOUND",
            )
        with disk_full_as_exhausted(self._volume):
            job, created = await self._db(self.journal.create, spec, request.idempotency_key)
        if created:
            self.worker.submit(job.id)
            log.info("transfer %s queued", job.id)
        return transfer_to_proto(self.worker.overlay(job))

    async def GetTransfer(
        self, request: transfer_pb2.GetTransferRequest, context: aio.ServicerContext
    ) -> transfer_pb2.Transfer:
        _require(request.id, "id")
        return transfer_to_proto(await self.worker.snapshot(request.id))

    async def ListTransfers(
        self, request: transfer_pb2.ListTransfersRequest, context: aio.ServicerContext
    ) -> transfer_pb2.ListTransfersResponse:
        size = paging.page_size(request.page_size)
        states = []
        for s in request.states:
            if s not in STATE_FROM_PROTO:
                raise invalid_argument(
                    "unknown state in the filter", [("states", f"{s} is not a valid state")]
                )
            states.append(STATE_FROM_PROTO[s])
        flt = {
            "kind": "transfers",
            "states": sorted(s.value for s in states),
            "dst": request.destination_endpoint,
            "repo": request.repository,
        }
        token = paging.decode_token(request.page_token, expect=flt)
        before = int(token.get("before", 0) or 0)  # type: ignore[call-overload]
        jobs = await self._db(
            self.journal.list_page,
            size + 1,
            before_seq=before,
            states=states,
            destination_endpoint=request.destination_endpoint,
            repository=request.repository,
        )
        resp = transfer_pb2.ListTransfersResponse(
            transfers=[transfer_to_proto(self.worker.overlay(j)) for j in jobs[:size]]
        )
        if len(jobs) > size:
            resp.next_page_token = paging.encode_token({**flt, "before": jobs[size - 1].seq})
        return resp

    async def WatchTransfer(
        self, request: transfer_pb2.WatchTransferRequest, context: aio.ServicerContext
    ) -> AsyncIterator[transfer_pb2.Transfer]:
        _require(request.id, "id")
        async for job in self.worker.watch(request.id, final_only=request.final_only):
            yield transfer_to_proto(job)

    async def CancelTransfer(
        self, request: transfer_pb2.CancelTransferRequest, context: aio.ServicerContext
    ) -> transfer_pb2.Transfer:
        _require(request.id, "id")
        return transfer_to_proto(await self.worker.cancel(request.id))


def _clear_stale_spool(spool: Path) -> None:
    """Remove blob files a killed process left behind; resumed jobs download them again."""
    stale = list(spool.glob("*.blob"))
    for f in stale:
        f.unlink(missing_ok=True)
    if stale:
        log.info("removed %d stale spool file(s) from %s", len(stale), spool)


def _check(c: StepResult) -> transfer_pb2.ConnectionCheck:
    return transfer_pb2.ConnectionCheck(
        step=transfer_pb2.ConnectionCheck.Step.ValueType(c.step),
        result=transfer_pb2.ConnectionCheck.Result.ValueType(c.result),
        message=c.message,
    )


def _require(value: str, field: str) -> None:
    if not value:
        raise invalid_argument(f"{field} is required", [(field, "required")])


def _reject_output_only(msg: transfer_pb2.Endpoint) -> None:
    if msg.has_secret:
        raise invalid_argument(
            "has_secret is output only; set secret to store one",
            [("endpoint.has_secret", "output only")],
        )
    if msg.has_webhook_secret:
        raise invalid_argument(
            "has_webhook_secret is output only; set webhook_secret to store one",
            [("endpoint.has_webhook_secret", "output only")],
        )


def _changes_from_mask(msg: transfer_pb2.Endpoint, paths: list[str]) -> dict[str, object]:
    """Field -> new value for UpdateEndpoint.

    Empty mask: every writable field set to a non-default value in the request (so a field
    cannot be cleared without a mask). "*": every writable field, cleared when not given
    (including the secret). Otherwise exactly the named fields; `secret` in the mask with an
    empty secret removes the stored secret.
    """
    given = endpoint_from_proto(msg)
    if not paths:
        _reject_output_only(msg)
        defaults = {
            "url": "", "username": "", "secret": "", "ca_pem": "",
            "insecure_skip_verify": False, "max_concurrency": 0, "requests_per_second": 0.0,
            "scan_on_push": False, "aliases": (), "webhook_secret": "",
        }
        return {
            f: getattr(given, f) for f in WRITABLE_FIELDS if getattr(given, f) != defaults[f]
        }
    if paths == ["*"]:
        return {f: getattr(given, f) for f in WRITABLE_FIELDS}
    violations = []
    for p in paths:
        if p == "name":
            violations.append(("update_mask", "name cannot be changed; create a new endpoint"))
        elif p in OUTPUT_ONLY:
            violations.append(("update_mask", f"{p} is output only"))
        elif p not in WRITABLE_FIELDS:
            violations.append(("update_mask", f"unknown field {p!r}"))
    if violations:
        raise invalid_argument("update_mask is not valid", violations)
    return {p: getattr(given, p) for p in paths}


def _validate_start(req: transfer_pb2.StartTransferRequest) -> JobSpec:
    v: list[tuple[str, str]] = []
    src, dst, opts = req.source, req.destination, req.options
    if not src.endpoint:
        v.append(("source.endpoint", "required"))
    problem = repository_problem(src.repository)
    if problem:
        v.append(("source.repository", problem))
    problem = reference_problem(src.reference)
    if problem:
        v.append(("source.reference", problem))
    if not dst.endpoint:
        v.append(("destination.endpoint", "required"))
    problem = repository_problem(dst.repository)
    if problem:
        v.append(("destination.repository", problem))
    if dst.tag:
        problem = tag_problem(dst.tag)
        if problem:
            v.append(("destination.tag", problem))
    if opts.source_tag:
        problem = tag_problem(opts.source_tag)
        if problem:
            v.append(("options.source_tag", problem))
    for i, p in enumerate(opts.platforms):
        if not PLATFORM_RE.fullmatch(p):
            v.append((f"options.platforms[{i}]", f"{p!r} is not os/arch[/variant]"))
    for i, kind in enumerate(opts.copy_referrers):
        if kind not in REFERRER_CHOICES:
            v.append((f"options.copy_referrers[{i}]",
                      f"unknown referrer kind {kind[:100]!r}; use {', '.join(REFERRER_CHOICES)}"))
    if len(req.idempotency_key) > MAX_IDEMPOTENCY_KEY:
        v.append(("idempotency_key", f"longer than {MAX_IDEMPOTENCY_KEY} characters"))
    if (
        src.endpoint == dst.endpoint
        and src.repository == dst.repository
        and (not dst.tag or dst.tag == src.reference)
    ):
        v.append(("destination", "is the same as the source"))
    if v:
        raise invalid_argument("the transfer request is not valid", v)
    return JobSpec(
        src_endpoint=src.endpoint,
        src_repository=src.repository,
        src_reference=src.reference,
        dst_endpoint=dst.endpoint,
        dst_repository=dst.repository,
        dst_tag=dst.tag,
        platforms=tuple(opts.platforms),
        fail_if_tag_exists=opts.fail_if_tag_exists,
        source_tag=opts.source_tag,
        copy_referrers=tuple(dict.fromkeys(opts.copy_referrers)),
    )
