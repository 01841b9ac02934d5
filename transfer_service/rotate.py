"""`python -m transfer_service.rotate --data DIR`: re-encrypt stored secrets under a new key.

$MIRROR_SECRET_KEY holds the keys, newest first (`NEW,OLD`). Every secret stored under DIR
(endpoint passwords and webhook secrets in transfer.db, subscription secrets in gateway.db)
is decrypted with whichever key fits and encrypted again with NEW, in one transaction per
file, and checked to open with NEW alone before it is committed; after that OLD is no longer
needed by the data (backups made before still need it). It holds DIR's lock, so it refuses to
run while a service uses DIR: a service still holding only OLD could not read what was
rewritten.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

from servicekit import datadir
from transfer_service.secrets import KEY_ENV, SecretBox, SecretKeyError

# (file, table, column): every place a Fernet token of the deployment's key is stored.
ENCRYPTED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("transfer.db", "endpoints", "secret_enc"),
    ("transfer.db", "endpoints", "webhook_secret_enc"),
    ("gateway.db", "subscriptions", "secret"),
)


@dataclass(frozen=True)
class Rotated:
    file: str
    table: str
    column: str
    count: int


def _keys(environ: dict[str, str] | os._Environ[str]) -> list[bytes]:
    keys = [k.strip().encode() for k in environ.get(KEY_ENV, "").split(",") if k.strip()]
    if len(keys) < 2:
        raise SecretKeyError(
            f"set {KEY_ENV} to the new key, then the old key(s), comma-separated "
            "(NEW,OLD): the secrets are read with any of them and written with the first"
        )
    return keys


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {str(row[1]) for row in conn.execute(f"PRAGMA table_info({table})")}


def rotate_file(path: Path, targets: list[tuple[str, str]], box: SecretBox,
                newest: SecretBox) -> list[Rotated]:
    """Re-encrypt `targets` (table, column) of one SQLite file in one transaction."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            done = []
            for table, column in targets:
                if column not in _columns(conn, table):
                    continue  # an older schema without this column (or table)
                rows = conn.execute(
                    f"SELECT rowid, {column} FROM {table} "
                    f"WHERE {column} IS NOT NULL AND length({column}) > 0"
                ).fetchall()
                for rowid, token in rows:
                    fresh = box.encrypt(box.decrypt(bytes(token)))
                    newest.decrypt(fresh)  # opens with the new key alone, or nothing is saved
                    conn.execute(f"UPDATE {table} SET {column}=? WHERE rowid=?", (fresh, rowid))
                done.append(Rotated(path.name, table, column, len(rows)))
            conn.execute("COMMIT")
            return done
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()


def rotate(data: Path, environ: dict[str, str] | os._Environ[str] = os.environ) -> list[Rotated]:
    """Re-encrypt every stored secret under DATA with the first key of $MIRROR_SECRET_KEY."""
    keys = _keys(environ)
    box, newest = SecretBox(keys), SecretBox(keys[:1])
    per_file: dict[str, list[tuple[str, str]]] = {}
    for file, table, column in ENCRYPTED_COLUMNS:
        per_file.setdefault(file, []).append((table, column))
    out: list[Rotated] = []
    for file, targets in per_file.items():
        path = data / file
        if path.is_file():
            out += rotate_file(path, targets, box, newest)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m transfer_service.rotate", description=__doc__.splitlines()[0]
    )
    p.add_argument("--data", required=True, type=Path, help="the services' data folder")
    args = p.parse_args(argv)
    if not args.data.is_dir():
        print(f"rotate: {args.data} is not a folder", file=sys.stderr)
        return 2
    try:
        lock = datadir.claim(args.data, "transfer_service.rotate")
    except datadir.DataDirInUse as exc:
        print(f"rotate: {exc}", file=sys.stderr)
        return 1
    try:
        done = rotate(args.data)
    except SecretKeyError as exc:
        print(f"rotate: {exc}", file=sys.stderr)
        return 1
    except sqlite3.Error as exc:
        print(f"rotate: {args.data}: {exc}; nothing was changed in that file", file=sys.stderr)
        return 1
    finally:
        lock.release()
    if not done:
        print(f"rotate: no transfer.db or gateway.db in {args.data}", file=sys.stderr)
        return 1
    for r in done:
        print(f"{r.file} {r.table}.{r.column}: {r.count} re-encrypted with the new key")
    return 0


if __name__ == "__main__":
    sys.exit(main())
