"""Common command line and run loop for `python -m <service>`."""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import signal
from collections.abc import Awaitable, Callable

from mirror.cmdline import log_level, version

from servicekit import datadir
from servicekit.logs import setup_logging


def base_parser(prog: str, description: str, default_port: int) -> argparse.ArgumentParser:
    """Arguments every service takes: --grpc-listen, --data, --database, --log-format,
    --log-level."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.set_defaults(prog_name=prog)
    p.add_argument("--version", action="version", version=f"{prog} (image-mirror) {version()}")
    p.add_argument("--grpc-listen", default=f"127.0.0.1:{default_port}", help="HOST:PORT")
    p.add_argument(
        "--data", default="./data", help="folder for this service's state (default: ./data)"
    )
    p.add_argument(
        "--database",
        default=os.environ.get("MIRROR_DATABASE", ""),
        metavar="URL",
        help="postgresql://USER@HOST:PORT/DB to keep this service's state in PostgreSQL (its "
        "own schema there; replicas share it); default: a SQLite file under --data. The "
        "environment variable MIRROR_DATABASE keeps a password out of the process list",
    )
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument(
        "--log-level", type=log_level, default="INFO", help="debug, info, warning or error"
    )
    return p


def startup_error(exc: BaseException, args: argparse.Namespace) -> str | None:
    """One line saying what went wrong at start and what to do, or None when unexpected."""
    text = str(exc)
    hint = "is another instance running? choose another port with --grpc-listen / --http-listen"
    if "Failed to bind" in text:  # grpc's own bind error names no errno
        return f"cannot listen on {getattr(args, 'grpc_listen', '?')}: address in use ({hint})"
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return f"cannot listen: {exc.strerror or text} ({hint})"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or text} (check the file's owner and mode)"
    if isinstance(exc, FileNotFoundError):
        return f"file not found: {exc.filename or text}"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"no space left on the data volume ({exc.filename or args.data})"
    if isinstance(exc, IsADirectoryError):
        return f"{exc.filename} is a folder, not a file"
    if isinstance(exc, (OSError, ValueError)):
        return text
    return None


def run_until_signal(
    args: argparse.Namespace, start: Callable[[], Awaitable[Callable[[], Awaitable[None]]]]
) -> None:
    """Run `start()` (which returns an async stop function) until SIGINT or SIGTERM.

    A failure while starting prints one line (`prog: what; what to do`) and exits 1.
    """
    setup_logging(args.log_format, args.log_level)
    prog = getattr(args, "prog_name", "image-mirror")
    try:
        # Held until the process exits: two writers would corrupt the state in the folder.
        lock = datadir.claim(args.data, prog)
    except (datadir.DataDirInUse, OSError) as exc:
        line = str(exc) if isinstance(exc, datadir.DataDirInUse) else startup_error(exc, args)
        raise SystemExit(f"{prog}: {line}") from None

    async def main() -> None:
        try:
            stop = await start()
        except SystemExit:
            raise
        except Exception as exc:
            line = startup_error(exc, args)
            if line is None:
                raise
            raise SystemExit(f"{prog}: {line}") from None
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
        await done.wait()
        logging.getLogger("servicekit").info("stopping")
        await stop()

    try:
        asyncio.run(main())
    finally:
        lock.release()
