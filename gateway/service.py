"""Wire the gateway together: stores, clients of the other services, worker, HTTP app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
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
from gateway.facts import FactGatherer
from gateway.http import WebhookApp, check_secret_required, split_listen, start_http
from gateway.inbox import Inbox
from gateway.leases import (
    DEFAULT_LEASE_S,
    Duties,
    LeaseStore,
    SharedLocks,
    default_replica_id,
)
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
from registry_client.resolver import EndpointResolver
from servicekit.db import Database
from servicekit.logs import context_id
from servicekit.retry import Backoff
from transfer_service.secrets import KEY_ENV

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
    # postgresql://... to share the state with other replicas; "" for DATA/gateway.db.
    database: str = ""
    # This replica's name in claims and leases (unique among the live replicas).
    replica_id: str = field(default_factory=default_replica_id)
    # How long a claim or a duty's lease lasts unless renewed (a dead replica's work is
    # taken over after at most this long).
    lease_s: float = DEFAULT_LEASE_S
    # The Fernet key file of subscription secrets (default DATA/secret.key); replicas
    # sharing a database need the same key ($MIRROR_SECRET_KEY works too).
    subscription_key_file: Path | None = None


class Gateway:
    """The gateway's parts; `servicer` is mounted on a gRPC server by the caller."""

    def __init__(
        self,
        cfg: GatewayConfig,
        policy_channel: aio.Channel,
        transfer_channel: aio.Channel,
        scanner_channel: aio.Channel | None = None,
        resolver: EndpointResolver | None = None,
        db: Database | None = None,
    ) -> None:
        self.cfg = cfg
        self.db = db if db is not None else open_database(cfg.data_dir, cfg.database)
        self.shared = self.db.dialect == "postgresql"
        owner, lease = cfg.replica_id, cfg.lease_s
        self.inbox = Inbox(self.db)
        self.runs = RunStore(self.db)
        policy = policy_pb2_grpc.PolicyServiceStub(policy_channel)
        transfer = transfer_pb2_grpc.TransferServiceStub(transfer_channel)
        scanner = scan_pb2_grpc.ScanServiceStub(scanner_channel) if scanner_channel else None
        # Outbound events: --notify-url and API subscriptions, secrets under the gateway's
        # key (in the stack, the transfer service's: they share the data folder).
        key_file = cfg.subscription_key_file or Path(cfg.data_dir) / "secret.key"
        self.notifier = Notifier(
            cfg.notify_urls,
            db=self.db,
            cipher=LazySecretBox(key_file),
            # Replicas: deliveries another replica wrote are found within a second.
            idle_s=1.0 if self.shared else 5.0,
        )
        self.directory = EndpointDirectory(transfer)
        self.dest_scans = DestinationScanner(
            self.db, self.directory, scanner, self.runs, owner=owner, lease_s=lease
        )
        self.tracker = TransferTracker(
            transfer,
            self.runs,
            self._on_final,
            before_success=self.dest_scans.prepare,
            owner=owner,
            lease_s=lease,
        )
        self.leases = LeaseStore(self.db, owner)
        self.runner = Runner(
            policy,
            transfer,
            FactGatherer(resolver, scanner),
            self.runs,
            self.tracker,
            max_hops=cfg.max_hops,
            # Replicas: one decision per (policy, image) at a time across all of them.
            shared_lock=SharedLocks(self.leases, lease).hold if self.shared else None,
        )
        self.worker = InboxWorker(
            self.inbox,
            self.runner,
            self.directory,
            concurrency=cfg.concurrency,
            owner=owner,
            lease_s=lease,
            # Replicas: an event whose replica died is picked up soon after its claim ends.
            idle_poll_s=min(5.0, lease) if self.shared else 5.0,
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
        self.duties = Duties(self.leases, lease)
        self.webhook = WebhookApp(
            self.inbox,
            cfg.webhook_secret,
            verifier=WebhookVerifier(transfer),
            directory=self.directory,
            health=lambda: {
                "tracking": self.tracker.active,
                "destination_scans": self.dest_scans.active,
                "replica": owner,
                "duties": self.duties.held,
            },
        )
        self._http: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.http_port = 0

    @classmethod
    async def open(
        cls,
        cfg: GatewayConfig,
        policy_channel: aio.Channel,
        transfer_channel: aio.Channel,
        scanner_channel: aio.Channel | None = None,
        resolver: EndpointResolver | None = None,
    ) -> Gateway:
        """The gateway, its database opened (connected, migrated) off the event loop."""
        loop = asyncio.get_running_loop()
        db = await loop.run_in_executor(None, open_database, cfg.data_dir, cfg.database)
        return cls(cfg, policy_channel, transfer_channel, scanner_channel, resolver, db=db)

    async def _on_final(self, run: RunRecord) -> None:
        await self.dest_scans.start(run.id)
        await self.notifier.send(run)

    async def start(self) -> None:
        """Background work: resume tracking, the inbox worker, and the duties one replica
        does at a time (notifications, reconcile, polls, ...)."""
        if not self.shared:
            # SQLite: this process is the file's only user, so what the last one held (it
            # crashed, or stopped) is taken over now rather than when its leases run out.
            await self.db.run(self._take_over)
        else:
            self._warn_about_the_key()
        await self.db.run(self.inbox.refresh_depth)
        await self.notifier.sync_urls()
        resumed = await self.tracker.adopt()
        if resumed:
            log.info("resumed tracking of %d running transfer(s)", resumed)
        owed = await self.dest_scans.adopt()
        if owed:
            log.info("resumed %d scan(s) on push at destinations", owed)
        self.worker.start()
        self._tasks = [
            asyncio.create_task(self.tracker.maintain_forever()),
            asyncio.create_task(self.dest_scans.maintain_forever()),
        ]
        self.duties.add("deliveries", self.notifier.run_sender)
        self.duties.add("housekeeping", self._housekeeping)
        self.duties.add("signature-waits", self._expire_waits)
        if self.scheduler is not None:
            self.duties.add("polls", self.scheduler.run_forever)
        if self.cfg.baseline_interval_s > 0:
            interval = self.cfg.baseline_interval_s
            self.duties.add("baselines", lambda: self.sweeper.watch_policies(interval))
        if self.cfg.reconcile_interval_s > 0:
            every = self.cfg.reconcile_interval_s
            self.duties.add("reconcile", lambda: self.sweeper.run_periodically(every))
        await self.duties.start()
        log.info(
            "replica %s (%s); duties here: %s",
            self.cfg.replica_id,
            "shared PostgreSQL database" if self.shared else "SQLite",
            ", ".join(self.duties.held) or "none (another replica holds them)",
        )

    def _take_over(self) -> None:
        self.leases.clear()
        self.inbox.release_claims()
        self.runs.release_tracking()
        self.dest_scans.release_claims()

    def _warn_about_the_key(self) -> None:
        if self.cfg.subscription_key_file is None and not os.environ.get(KEY_ENV):
            log.warning(
                "replicas share subscriptions: give each the same key of subscription "
                "secrets (--subscription-key-file or $%s), or a signed delivery another "
                "replica sends cannot be signed",
                KEY_ENV,
            )

    async def _expire_waits(self) -> None:
        """Decide runs whose wait for a signature ended (checked every second)."""
        context_id.set("signature-waits")
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.runner.expire_waits()
            except Exception:
                log.exception("deciding runs that waited for a signature failed")

    async def _housekeeping(self) -> None:
        """Restart sweep runs a crash left pending (retrying while the transfer service is
        unreachable), then forget finished events past the dedup window, hourly.

        With replicas, a replica that died may leave sweep runs pending at any time: those
        unchanged for two leases are restarted every few seconds."""
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
        last_prune = 0.0
        while True:
            if time.monotonic() - last_prune >= 3600 or last_prune == 0.0:
                last_prune = time.monotonic()
                try:
                    removed = await self.db.run(self.inbox.prune, DEDUP_WINDOW_S)
                    if removed:
                        log.info("forgot %d finished event(s) older than the dedup window",
                                 removed)
                    await self.db.run(self.leases.forget_expired, 3600.0)
                except Exception:
                    log.exception("forgetting old events failed")
            if not self.shared:
                await asyncio.sleep(3600)
                continue
            await asyncio.sleep(max(self.cfg.lease_s, 1.0))
            try:
                await self.runner.restart_pending(older_than_s=2 * self.cfg.lease_s)
            except Exception as exc:
                log.info("restarting pending runs failed: %s", exc)

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
        await self.duties.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.worker.stop()
        await self.tracker.stop()
        await self.dest_scans.stop()
        await self.notifier.stop()
        if self.shared:
            # Hand the work in flight over at once rather than when the claims run out.
            owner = self.cfg.replica_id
            with contextlib.suppress(Exception):
                await self.db.run(self.inbox.release_claims, owner)
                await self.db.run(self.runs.release_tracking, owner)
                await self.db.run(self.dest_scans.release_claims, owner)
        self.db.close()
