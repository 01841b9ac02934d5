"""Live progress of a transfer: rich bars on a terminal, plain lines otherwise."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from mirror.cli.output import enum_name, human_bytes
from mirror.cli.protodata import message_data
from mirror.v1 import transfer_pb2

FINAL = {
    transfer_pb2.Transfer.STATE_DONE,
    transfer_pb2.Transfer.STATE_ERROR,
    transfer_pb2.Transfer.STATE_CANCELED,
    transfer_pb2.Transfer.STATE_SUPERSEDED,
}


def state(t: transfer_pb2.Transfer) -> str:
    return enum_name(transfer_pb2.Transfer.State, t.state)


def blobs_placed(t: transfer_pb2.Transfer) -> int:
    """Blobs now at the destination: copied, already there, or mounted (disjoint counters)."""
    return t.blobs_done + t.blobs_skipped + t.blobs_mounted


def summary(t: transfer_pb2.Transfer) -> str:
    """One line: state, bytes, blobs (and the message when there is one)."""
    done = t.bytes_done + t.bytes_skipped
    line = (
        f"{t.id} {state(t)} {human_bytes(done)}/{human_bytes(t.bytes_total)} "
        f"blobs {blobs_placed(t)}/{t.blobs_total}"
    )
    if t.blobs_skipped or t.blobs_mounted:
        line += f" ({t.blobs_skipped} already there, {t.blobs_mounted} mounted)"
    if t.state == transfer_pb2.Transfer.STATE_DONE and t.digest:
        line += f" {t.digest}"
    if t.message:
        line += f": {t.message}"
    return line


def follow(
    snapshots: Iterable[transfer_pb2.Transfer], *, fmt: str = "table", tty: bool | None = None
) -> transfer_pb2.Transfer | None:
    """Show each snapshot; returns the last one (None when the stream sent nothing)."""
    tty = sys.stdout.isatty() if tty is None else tty
    last: transfer_pb2.Transfer | None = None
    if fmt == "json":
        for t in snapshots:
            print(json.dumps(message_data(t)), flush=True)
            last = t
        return last
    if not tty:
        previous = ""
        for t in snapshots:
            line = summary(t)
            if line != previous:
                print(line, flush=True)
                previous = line
            last = t
        return last
    progress = Progress(
        TextColumn("[bold]{task.fields[state]:<8}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TextColumn("blobs {task.fields[blobs]}"),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(),
        transient=False,
    )
    with progress:
        task = progress.add_task("transfer", total=None, state="waiting", blobs="0/0")
        for t in snapshots:
            progress.update(
                task,
                total=t.bytes_total or None,
                completed=t.bytes_done + t.bytes_skipped,
                state=state(t),
                blobs=f"{blobs_placed(t)}/{t.blobs_total}",
            )
            last = t
    if last is not None:
        # soft_wrap: the digest at the end stays on one line (copyable) on narrow terminals.
        Console().print(summary(last), highlight=False, markup=False, soft_wrap=True)
    return last
