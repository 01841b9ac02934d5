"""transfer.db written by the release before this one (schema version 1, verbatim) opens with
today's schema: endpoints keep their secrets (bound to the URL they already had), jobs keep
their state and progress, and the new columns read as what those rows meant."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from cryptography.fernet import Fernet
from grpc import aio
from mirror.v1 import transfer_pb2, transfer_pb2_grpc

from servicekit.server import start_server
from transfer_service.schema import DB_FILE, MIGRATIONS
from transfer_service.servicer import TransferServicer

T = transfer_pb2.Transfer
# transfer_service/schema.py MIGRATIONS at d64404e (the commit before issues 9-13), verbatim.
OLD_SCHEMA = """
    CREATE TABLE endpoints (
        name TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        username TEXT NOT NULL DEFAULT '',
        secret_enc BLOB,
        ca_pem TEXT NOT NULL DEFAULT '',
        insecure_skip_verify INTEGER NOT NULL DEFAULT 0,
        max_concurrency INTEGER NOT NULL DEFAULT 0,
        requests_per_second REAL NOT NULL DEFAULT 0,
        scan_on_push INTEGER NOT NULL DEFAULT 0,
        aliases TEXT NOT NULL DEFAULT '[]',
        create_time REAL NOT NULL,
        update_time REAL NOT NULL
    );
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        idempotency_key TEXT UNIQUE,
        state TEXT NOT NULL,
        message TEXT NOT NULL DEFAULT '',
        src_endpoint TEXT NOT NULL,
        src_repository TEXT NOT NULL,
        src_reference TEXT NOT NULL,
        dst_endpoint TEXT NOT NULL,
        dst_repository TEXT NOT NULL,
        dst_tag TEXT NOT NULL DEFAULT '',
        platforms TEXT NOT NULL DEFAULT '[]',
        fail_if_tag_exists INTEGER NOT NULL DEFAULT 0,
        digest TEXT NOT NULL DEFAULT '',
        media_type TEXT NOT NULL DEFAULT '',
        bytes_total INTEGER NOT NULL DEFAULT 0,
        bytes_done INTEGER NOT NULL DEFAULT 0,
        bytes_skipped INTEGER NOT NULL DEFAULT 0,
        blobs_total INTEGER NOT NULL DEFAULT 0,
        blobs_done INTEGER NOT NULL DEFAULT 0,
        blobs_skipped INTEGER NOT NULL DEFAULT 0,
        blobs_mounted INTEGER NOT NULL DEFAULT 0,
        manifests_total INTEGER NOT NULL DEFAULT 0,
        manifests_done INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        create_time REAL NOT NULL,
        start_time REAL,
        end_time REAL
    );
    CREATE INDEX jobs_state ON jobs(state);
    CREATE INDEX jobs_dst ON jobs(dst_endpoint, seq);
    """
DIGEST = "sha256:" + "b" * 64
COLUMNS = (
    "id, idempotency_key, state, message, src_endpoint, src_repository, src_reference,"
    " dst_endpoint, dst_repository, dst_tag, platforms, digest, bytes_total, bytes_done,"
    " attempts, create_time, start_time, end_time"
)


def old_database(data: Path, key: bytes) -> None:
    data.mkdir(parents=True)
    (data / "secret.key").write_bytes(key)
    (data / "secret.key").chmod(0o600)
    conn = sqlite3.connect(data / DB_FILE, isolation_level=None)
    conn.executescript(OLD_SCHEMA)
    conn.execute("PRAGMA user_version=1")
    now = time.time()
    conn.execute(
        "INSERT INTO endpoints (name, url, username, secret_enc, aliases, create_time,"
        " update_time) VALUES ('qa', 'https://qa.example:5000', 'bot', ?, ?, ?, ?)",
        (Fernet(key).encrypt(b"qa-password"), json.dumps(["qa.internal:5000"]), now, now),
    )
    conn.execute(
        "INSERT INTO endpoints (name, url, create_time, update_time)"
        " VALUES ('dev', 'http://127.0.0.1:5000', ?, ?)", (now, now),
    )
    rows = [
        ("job-done", "ev-1/pol-1", "done", "", "dev", "dev/app", "1.0", "qa", "qa/app", "1.0",
         json.dumps(["linux/amd64"]), DIGEST, 2048, 2048, 1, now - 60, now - 59, now - 58),
        ("job-waiting", "ev-2/pol-1", "waiting", "retrying", "dev", "dev/app", "2.0", "qa",
         "qa/app", "2.0", "[]", "", 0, 0, 2, now - 30, None, None),
    ]
    conn.executemany(f"INSERT INTO jobs ({COLUMNS}) VALUES ({','.join('?' * 18)})", rows)
    conn.close()


async def test_an_old_transfer_database_keeps_endpoints_secrets_and_jobs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    old_database(data, Fernet.generate_key())
    servicer = TransferServicer.open(data)  # not started: the waiting job stays waiting
    server = await start_server([servicer], "127.0.0.1:0")
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = transfer_pb2_grpc.TransferServiceStub(channel)
            qa = await stub.GetEndpoint(transfer_pb2.GetEndpointRequest(name="qa"))
            assert qa.has_secret and qa.username == "bot" and not qa.secret
            assert list(qa.aliases) == ["qa.internal:5000"] and not qa.has_webhook_secret
            # The secret still opens and is still bound to the URL it was stored with.
            cfg = servicer.endpoints.config_for("qa")
            assert cfg.password == "qa-password" and cfg.url == "https://qa.example:5000"
            done = await stub.GetTransfer(transfer_pb2.GetTransferRequest(id="job-done"))
            assert done.state == T.STATE_DONE and done.digest == DIGEST
            assert (done.bytes_total, done.bytes_done, done.attempts) == (2048, 2048, 1)
            assert list(done.options.platforms) == ["linux/amd64"]
            assert done.options.source_tag == "" and list(done.options.copy_referrers) == []
            assert list(done.referrers) == [] and not done.HasField("next_attempt_time")
            waiting = await stub.GetTransfer(transfer_pb2.GetTransferRequest(id="job-waiting"))
            assert waiting.state == T.STATE_WAITING and waiting.message == "retrying"
            assert waiting.idempotency_key == "ev-2/pol-1" and waiting.attempts == 2
            listed = await stub.ListTransfers(transfer_pb2.ListTransfersRequest(page_size=10))
            assert {t.id for t in listed.transfers} == {"job-done", "job-waiting"}
        conn = sqlite3.connect(data / DB_FILE)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) > 1
        conn.close()
    finally:
        await server.stop(0)
        await servicer.stop()
