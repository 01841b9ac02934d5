"""Bounds on one scan: package records parsed, and the size of the report sent back.

A scan that would exceed them is refused with ScanError("SCAN_TOO_BIG", "scan too big: ...")
rather than cut short, with one exception: the vulnerability list (which no rule reads; rules
read `counts`) is cut to fit, lowest scores first, and the report says `truncated`. Components
are never cut: a partial component list would make `component != "x"` and `license not in
[...]` rules hold for packages the report left out, so a gate would leak.
"""

from __future__ import annotations

from mirror.v1 import scan_pb2

from scanner.errors import ScanError

TOO_BIG = "SCAN_TOO_BIG"
# 1 tag byte + 1 value byte for `truncated = true` (field 15).
_TRUNCATED_FLAG_BYTES = 2


class RecordBudget:
    """Counts package records (paragraphs, files) parsed in one image; None: no limit."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0

    def take(self, where: str) -> None:
        """Count one record found in `where` (a path in the image)."""
        self.used += 1
        if self.limit is not None and self.used > self.limit:
            raise ScanError(
                TOO_BIG,
                f"scan too big: more than {self.limit} package records (limit reached in "
                f"/{where})",
            )


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _varint_len(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def bound_report(report: scan_pb2.ScanReport, max_bytes: int) -> scan_pb2.ScanReport:
    """`report` when it fits in `max_bytes`; else cut its vulnerability list to fit.

    `report.vulnerabilities` must be sorted most severe first (convert.report_pb does), so
    what is kept is what matters most. ScanError(SCAN_TOO_BIG) when the report without any
    vulnerability still does not fit.
    """
    if report.ByteSize() <= max_bytes:
        return report
    vulns = list(report.vulnerabilities)
    del report.vulnerabilities[:]
    room = max_bytes - report.ByteSize() - _TRUNCATED_FLAG_BYTES
    if room < 0:
        raise ScanError(
            TOO_BIG,
            f"scan too big: the report of {len(report.components)} components is "
            f"{_mib(report.ByteSize())}, over the limit of {_mib(max_bytes)}",
        )
    kept: list[scan_pb2.Vulnerability] = []
    for v in vulns:
        n = v.ByteSize()
        n += 1 + _varint_len(n)  # field tag (5) + length prefix
        if n > room:
            break
        room -= n
        kept.append(v)
    report.vulnerabilities.extend(kept)
    report.truncated = True
    return report


__all__ = ["TOO_BIG", "RecordBudget", "bound_report"]
