"""Logging setup: text for people, JSON lines for machines; a context id on every line."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator

# Set per RPC or per job so that every line it logs carries the id.
context_id: contextvars.ContextVar[str] = contextvars.ContextVar("context_id", default="-")
# Machine-readable fields (policy, run, transfer, repository...) of what the task works on.
_fields: contextvars.ContextVar[dict[str, object]] = contextvars.ContextVar("log_fields")

# Attributes every LogRecord has: anything else on a record came from `extra=` and is a field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "ctx"}


def _merged(extra: dict[str, object]) -> dict[str, object]:
    return {**_fields.get({}), **{k: v for k, v in extra.items() if v not in ("", None)}}


def bind(**extra: object) -> None:
    """Add fields to every line this task (and the tasks it starts) logs from now on."""
    _fields.set(_merged(extra))


@contextlib.contextmanager
def fields(**extra: object) -> Iterator[None]:
    """Fields for the lines logged inside the block only."""
    token = _fields.set(_merged(extra))
    try:
        yield
    finally:
        _fields.reset(token)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.ctx = context_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, ctx, msg, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "ctx": getattr(record, "ctx", "-"),
            "msg": record.getMessage(),
        }
        for key, value in _fields.get({}).items():
            doc.setdefault(key, value)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc.setdefault(key, value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(ctx)s] %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
