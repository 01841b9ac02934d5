"""What every image-mirror program's command line shares (mirrorctl, the services, the
console): the version `--version` prints and the values `--log-level` takes."""

from __future__ import annotations

import argparse
from importlib import metadata

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def version() -> str:
    """The installed image-mirror version ('unknown' when run from a bare checkout)."""
    try:
        return metadata.version("image-mirror")
    except metadata.PackageNotFoundError:
        return "unknown"


def log_level(text: str) -> str:
    """argparse type of --log-level: a level name in any case, returned upper-case."""
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a log level; use one of {', '.join(LOG_LEVELS).lower()}"
        )
    return level
