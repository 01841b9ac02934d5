"""Move an embedded stack's state into PostgreSQL, for a scale-out deployment.

    python -m stack.copy_database --data ./data --database postgresql://mirror@db/mirror

Copies each service's SQLite file under --data (policies and trusted keys, endpoints with
their encrypted secrets and jobs, runs, events, polls and subscriptions, scan reports)
into that service's schema in the PostgreSQL database, which must not hold rows yet. The
stack must be stopped (its data folder is locked while it runs). Secrets stay encrypted
with the same key file: give the transfer service that key (`--key-file`) after the move.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from mirror.cmdline import version

from servicekit import datadir
from servicekit.db import Database, MigrationStep, is_postgres_url, open_service_database
from servicekit.dbcopy import copy_rows, seeded_tables


@dataclass(frozen=True)
class ServiceDatabase:
    service: str
    file: str
    schema: str
    migrations: Sequence[MigrationStep]


def service_databases() -> list[ServiceDatabase]:
    """Each service's database: its SQLite file name under --data and its schema on PG."""
    from gateway import schema as gateway_schema
    from policy_service import store as policy_store
    from scanner import store as scanner_store
    from transfer_service import schema as transfer_schema

    return [
        ServiceDatabase("policy", policy_store.DB_FILE, "policy", policy_store.MIGRATIONS),
        ServiceDatabase(
            "transfer", transfer_schema.DB_FILE, transfer_schema.SCHEMA, transfer_schema.MIGRATIONS
        ),
        ServiceDatabase("gateway", "gateway.db", gateway_schema.SCHEMA, gateway_schema.MIGRATIONS),
        ServiceDatabase("scanner", scanner_store.DB_FILE, "scanner", scanner_store.MIGRATIONS),
    ]


def copy_stack(data: Path, url: str, out: TextIO | None = None) -> int:
    """Copy every service database found under `data`; returns the rows copied."""
    out = out or sys.stdout
    total = 0
    for sd in service_databases():
        path = data / sd.file
        if not path.exists():
            print(f"{sd.service}: no {path.name} under {data}; nothing to copy", file=out)
            continue
        src: Database = open_service_database("", path, sd.migrations, sd.schema)
        dst = open_service_database(url, path, sd.migrations, sd.schema)
        try:
            copied = copy_rows(src, dst, seeded_tables(sd.migrations))
        finally:
            src.close()
            dst.close()
        rows = sum(c.rows for c in copied)
        total += rows
        detail = ", ".join(f"{c.table} {c.rows}" for c in copied if c.rows)
        print(f"{sd.service}: {rows} rows into schema {sd.schema} ({detail or 'empty'})", file=out)
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m stack.copy_database", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--version", action="version", version=f"copy_database (image-mirror) {version()}"
    )
    p.add_argument("--data", required=True, help="the stopped stack's data folder")
    p.add_argument("--database", required=True, metavar="URL", help="postgresql://... (empty)")
    args = p.parse_args(argv)
    if not is_postgres_url(args.database):
        p.error("--database must be a postgresql:// URL")
    data = Path(args.data)
    if not data.is_dir():
        p.error(f"{data} is not a folder")
    try:
        lock = datadir.claim(data, "stack.copy_database")
    except datadir.DataDirInUse as exc:
        print(f"copy_database: {exc}", file=sys.stderr)
        return 1
    try:
        total = copy_stack(data, args.database)
    except (ValueError, RuntimeError) as exc:
        print(f"copy_database: {exc}", file=sys.stderr)
        return 1
    finally:
        lock.release()
    print(f"copied {total} rows; start the services with --database (MIRROR_DATABASE)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
