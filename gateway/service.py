"""Wire the gateway together: stores, clients of the other services, worker, HTTP app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from grpc import aio
from mirror.v1 import policy_pb2_grpc, scan_pb2_grpc, transfer_pb2_grpc

from gateway.baselines import BaselineStore
from gateway.deletions import Deleter
from gateway.dest_scan import DestinationScanner
from gateway.endpoints import EndpointDirectory
from gateway.facts import EndpointResolver, FactGatherer
from gateway.http import WebhookApp, check_secret_required, split_listen, start_http
from gateway.inbox import Inbox
from gateway.notify import Notifier
from gateway.polls import PollStore
from gateway.runner import DEFAULT_MAX_HOPS, Runner
from gateway.runs import RunRecord, RunStore
from gateway.scheduler import PollScheduler
from gateway.schema import open_database
from gateway.servicer import GatewayServicer
from gateway.subscriptions import LazySecretBox
from gateway.sweep import Sweeper
from gateway.tracker import TransferTracker
from gateway.webhook_auth import WebhookVerifier
from gateway.worker import InboxWorker
from servicekit.logs import context_id
from servicekit.retry import Backoff

log = logging.getLogger("gateway")

# Finished events are kept this long so that late redeliveries are still recognized.
DEDUP_WINDOW_S = 7 * 24 * 3600


@dataclass
class GatewayConfig:
    data_dir: Path
    webhook_secret: str = ""
    notify_urls: Sequence[str] = field(default_factory=list)
    concurrency: int = 8
    # 0 disables the periodic reconcile.
    reconcile_interval_s: float = 300.0
    # How often newly saved policies get their baseline (what Reconcile never backfills).
    baseline_interval_s: float = 2.0
    # Longest promotion chain through image-mirror's own pushes (stops loops it cannot see).
    max_hops: int = DEFAULT_MAX_HOPS


class Gateway:
    """The gateway's parts; `servicer` is mounted on a gRPC server by the caller."""

    def __init__(
        self,
        cfg: GatewayConfig,
        policy_channel: aio.Channel,
        transfer_channel: aio.Channel,
        scanner_channel: aio.Channel | None = None,
        resolver: EndpointResolver | None = None,
    ) -> None:
        self.cfg = cfg
        self.db = open_database(cfg.data_dir)
        self.inbox = Inbox(self.db)
        self.runs = RunStore(self.db)
        policy = policy_pb2_grpc.PolicyServiceStub(policy_channel)
        transfer = transfer_pb2_grpc.TransferServiceStub(transfer_channel)
        scanner = scan_pb2_grpc.ScanServiceStub(scanner_channel) if scanner_channel else None
        # Outbound events: --notify-url and API subscriptions, secrets under the deployment's
        # key (the transfer service's in the stack, which shares the data folder).
        self.notifier = Notifier(
            cfg.notify_urls, db=self.db, cipher=LazySecretBox(Path(cfg.data_dir) / "secret.key")
        )
        self.directory = EndpointDirectory(transfer)
        self.dest_scans = DestinationScanner(self.db, self.directory, scanner, self.runs)
        self.tracker = TransferTracker(
            transfer, self.runs, self._on_final, before_success=self.dest_scans.prepare
        )
        self.runner = Runner(
            policy,
            transfer,
            FactGatherer(resolver, scanner),
            self.runs,
            self.tracker,
            max_hops=cfg.max_hops,
        )
        self.worker = InboxWorker(
            self.inbox, self.runner, self.directory, concurrency=cfg.concurrency
        )
        self.deleter = Deleter(transfer, policy, self.runs, self.runner)
        self.sweeper = Sweeper(
            policy,
            self.directory,
            resolver,
            self.runner,
            self.runs,
            self.inbox,
            BaselineStore(self.db),
            self.deleter,
        )
        self.polls = PollStore(self.db)
        self.scheduler = (
            PollScheduler(
                policy,
                resolver,
                self.runner,
                self.runs,
                self.polls,
                self.sweeper.repositories,
                deleter=self.deleter,
            )
            if resolver is not None
            else None
        )
        self.servicer = GatewayServicer(
            self.inbox, self.runs, self.sweeper, self.directory, policy, self.polls,
            subscriptions=self.notifier.store,
            deleter=self.deleter,
        )
        self.webhook = WebhookApp(
            self.inbox,
            cfg.webhook_secret,
            verifier=WebhookVerifier(transfer),
            directory=self.directory,
            health=lambda: {
                "tracking": self.tracker.active,
                "destination_scans": self.dest_scans.active,
            },
        )
        self._http: web.AppRunner | None = None
        self._reconcile_task: asyncio.Task[None] | None = None
        self._housekeeping_task: asyncio.Task[None] | None = None
        self._baseline_task: asyncio.Task[None] | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._waits_task: asyncio.Task[None] | None = None
        self.http_port = 0

    def _on_final(self, run: RunRecord) -> None:
        self.dest_scans.start(run.id)
        self.notifier.send(run)

    async def start(self) -> None:
        """Background work: resume tracking, the inbox worker, notifications, reconcile."""
        await self.notifier.start()
        resumed = self.tracker.resume()
        if resumed:
            log.info("resumed tracking of %d running transfer(s)", resumed)
        owed = self.dest_scans.resume()
        if owed:
            log.info("resumed %d scan(s) on push at destinations", owed)
        self.worker.start()
        self._housekeeping_task = asyncio.create_task(self._housekeeping())
        self._waits_task = asyncio.create_task(self._expire_waits())
        if self.scheduler is not None:
            self._poll_task = asyncio.create_task(self.scheduler.run_forever())
        if self.cfg.baseline_interval_s > 0:
            self._baseline_task = asyncio.create_task(
                self.sweeper.watch_policies(self.cfg.baseline_interval_s)
            )
        if self.cfg.reconcile_interval_s > 0:
            self._reconcile_task = asyncio.create_task(
                self.sweeper.run_periodically(self.cfg.reconcile_interval_s)
            )

    async def _expire_waits(self) -> None:
        """Decide runs whose wait for a signature ended (checked every second)."""
        context_id.set("signature-waits")
        while True:
            await asyncio.sleep(1.0)
            try:
                self.runner.expire_waits()
            except Exception:
                log.exception("deciding runs that waited for a signature failed")

    async def _housekeeping(self) -> None:
        """Restart sweep runs a crash left pending (retrying while the transfer service is
        unreachable), then forget finished events past the dedup window, hourly."""
        context_id.set("housekeeping")
        backoff = Backoff(base=1.0, cap=60.0)
        attempt = 0
        while True:
            try:
                await self.runner.restart_pending()
                break
            except Exception:
                delay = backoff.delay(attempt)
                attempt += 1
                log.exception("restarting pending runs failed; retrying in %.1fs", delay)
                await asyncio.sleep(delay)
        while True:
            removed = self.inbox.prune(DEDUP_WINDOW_S)
            if removed:
                log.info("forgot %d finished event(s) older than the dedup window", removed)
            await asyncio.sleep(3600)

    async def start_http(
        self, listen: str, extend: Callable[[web.Application], object] | None = None
    ) -> int:
        """Serve /events, /metrics and /healthz on HOST:PORT; returns the bound port.
        `extend` may add routes of its own to the application (the stack's web console)."""
        host, port = split_listen(listen)
        check_secret_required(host, self.cfg.webhook_secret)
        app = self.webhook.make_app()
        if extend is not None:
            extend(app)
        self._http, self.http_port = await start_http(app, host, port)
        return self.http_port

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.cleanup()
            self._http = None
        for task in (
            self._reconcile_task,
            self._housekeeping_task,
            self._baseline_task,
            self._poll_task,
            self._waits_task,
        ):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.worker.stop()
        await self.tracker.stop()
        await self.dest_scans.stop()
        await self.notifier.stop()
        self.db.close()
