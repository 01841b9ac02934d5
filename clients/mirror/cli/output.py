"""Rendering results: rich tables for people, JSON or YAML for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import yaml
from google.protobuf import message as pb_message
from rich.console import Console
from rich.table import Table

from mirror import enums
from mirror.cli.protodata import message_data

Column = tuple[str, Callable[[Any], object]]
FORMATS = ("table", "wide", "json", "yaml")


def to_data(value: Any) -> Any:
    """Plain data (dicts, lists, scalars) from messages, lists of messages or plain data;
    messages with every field (see `protodata.message_data`)."""
    if isinstance(value, pb_message.Message):
        return message_data(value)
    if isinstance(value, dict):
        return {k: to_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_data(v) for v in value]
    return value


class Output:
    """Writes results in the chosen format: table (default), wide (a table with more
    columns), json or yaml."""

    def __init__(self, fmt: str = "table") -> None:
        self.fmt = fmt
        # Piped output is read by grep and friends: do not fold it to 80 columns (nor the
        # many columns of -o wide).
        width = None if sys.stdout.isatty() else (1000 if fmt == "wide" else 240)
        self.console = Console(soft_wrap=False, width=width)
        # Errors and hints stay one line each, whatever the width (greppable, copyable).
        self.err = Console(stderr=True, soft_wrap=True)

    @property
    def machine(self) -> bool:
        return self.fmt in ("json", "yaml")

    def data(self, value: Any) -> None:
        """Print `value` as JSON or YAML (used for every non-table format)."""
        data = to_data(value)
        if self.fmt == "yaml":
            sys.stdout.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        else:
            sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def rows(
        self, items: Sequence[Any], columns: Sequence[Column], *, title: str = "",
        empty: str = "nothing to show", wide: Sequence[Column] = (),
    ) -> None:
        """A list: a table with `columns` (and `wide` under -o wide) for people, the items
        themselves for scripts."""
        if self.machine:
            self.data(list(items))
            return
        if not items:
            self.err.print(f"[dim]{empty}[/dim]")
            return
        table = Table(title=title or None, show_edge=False, header_style="bold")
        if self.fmt == "wide":
            columns = [*columns, *wide]
        for name, _ in columns:
            table.add_column(name, overflow="fold")
        for item in items:
            table.add_row(*(_cell(fn(item)) for _, fn in columns))
        self.console.print(table)

    def record(self, item: Any, fields: Iterable[Column] | None = None) -> None:
        """One object: FIELD/VALUE lines for people, the object itself for scripts."""
        if self.machine:
            self.data(item)
            return
        if fields is None:
            data = to_data(item)
            fields = [(k, const(v)) for k, v in data.items()]
        table = Table(show_header=False, show_edge=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column(overflow="fold")
        for name, fn in fields:
            table.add_row(name, _cell(fn(item)))
        self.console.print(table)

    def message(self, text: str) -> None:
        """A short confirmation for people (stderr under -o json/yaml, to keep stdout clean)."""
        (self.err if self.machine else self.console).print(text, highlight=False)


def const(value: object) -> Callable[[Any], object]:
    """A column function that ignores the item and returns `value`."""
    return lambda _item: value


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return "" if value is None else str(value)


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def when(ts: Any) -> str:
    """A protobuf Timestamp as local ISO time (empty when unset)."""
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return ""
    return ts.ToDatetime().replace(microsecond=0).isoformat() + "Z"


def enum_name(enum_type: Any, value: int) -> str:
    """`STATE_RUNNING` -> `running`: the one spelling of flags, YAML and -o json."""
    return str(enums.short_name(enum_type.DESCRIPTOR, value))
