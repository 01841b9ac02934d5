"""Errors raised while scanning: one class, a machine-readable reason and a message."""

from __future__ import annotations


class ScanError(Exception):
    """An image (or input) the scanner refuses; `reason` is a stable UPPER_SNAKE code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
