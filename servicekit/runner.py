"""Common command line and run loop for `python -m <service>`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from servicekit.logs import setup_logging


def base_parser(prog: str, description: str, default_port: int) -> argparse.ArgumentParser:
    """Arguments every service takes: --grpc-listen, --data, --log-format, --log-level."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--grpc-listen", default=f"127.0.0.1:{default_port}", help="HOST:PORT")
    p.add_argument("--data", default="./data", help="folder for this service's state")
    p.add_argument("--log-format", choices=["text", "json"], default="text")
    p.add_argument("--log-level", default="INFO")
    return p


def run_until_signal(
    args: argparse.Namespace, start: Callable[[], Awaitable[Callable[[], Awaitable[None]]]]
) -> None:
    """Run `start()` (which returns an async stop function) until SIGINT or SIGTERM."""
    setup_logging(args.log_format, args.log_level)

    async def main() -> None:
        stop = await start()
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, done.set)
        await done.wait()
        logging.getLogger("servicekit").info("stopping")
        await stop()

    asyncio.run(main())
