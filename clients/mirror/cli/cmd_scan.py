"""`mirrorctl scan ...` and `mirrorctl vulndb import`: image facts and the vulnerability DB."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from mirror.cli.context import EXIT_INVALID, EXIT_NOT_FOUND, CliError, Context
from mirror.cli.output import enum_name, human_bytes, when
from mirror.cli.parsing import command, image_ref
from mirror.v1 import scan_pb2


def _report(ctx: Context, r: scan_pb2.ScanReport) -> None:
    if ctx.out.machine:
        ctx.out.data(r)
        return
    c = r.counts
    ctx.out.record(r, [
        ("digest", lambda r: r.digest), ("repository", lambda r: r.repository),
        ("os", lambda r: r.os.pretty_name or r.os.id),
        ("platforms", lambda r: list(r.platforms)), ("size", lambda r: human_bytes(r.size_bytes)),
        ("components", lambda r: len(r.components)),
        ("vulnerabilities", lambda r: f"{c.critical} critical, {c.major} major, {c.minor} minor, "
                                      f"{c.all} in all"),
        ("database", lambda r: r.database_version), ("sources", lambda r: list(r.sources)),
        ("scanned", lambda r: when(r.scan_time)),
    ])
    if ctx.args.vulns and r.vulnerabilities:
        ctx.out.rows(list(r.vulnerabilities), [
            ("ID", lambda v: v.id),
            ("SEVERITY", lambda v: enum_name(scan_pb2.Vulnerability.Bucket, v.bucket)),
            ("SCORE", lambda v: f"{v.score:.1f}"), ("COMPONENT", lambda v: v.component),
            ("INSTALLED", lambda v: v.installed_version), ("FIXED", lambda v: v.fixed_version),
        ])
    if ctx.args.components and r.components:
        ctx.out.rows(list(r.components), [
            ("NAME", lambda x: x.name), ("VERSION", lambda x: x.version),
            ("TYPE", lambda x: x.type), ("LICENSES", lambda x: list(x.licenses)),
        ])


def image(ctx: Context) -> int:
    ref = image_ref(ctx.args.image)
    r = ctx.client.scanner.scan_image(
        endpoint=ref.endpoint, repository=ref.repository, reference=ref.reference,
        force=ctx.args.force,
    )
    _report(ctx, r)
    return 0


def show(ctx: Context) -> int:
    _report(ctx, ctx.client.scanner.get_scan(ctx.args.digest, repository=ctx.args.repository))
    return 0


def vulndb_import(ctx: Context) -> int:
    a = ctx.args
    if a.server_path:
        resp = ctx.client.scanner.import_vulnerabilities(path=a.source)
    else:
        try:
            data = sys.stdin.buffer.read() if a.source == "-" else Path(a.source).read_bytes()
        except IsADirectoryError:
            raise CliError(f"{a.source} is a folder: zip it, or pass --server-path when the "
                           "scanner can read it") from None
        except OSError as err:
            raise CliError(f"cannot read {a.source}: {err.strerror}") from None
        resp = ctx.client.scanner.import_vulnerabilities(data=data)
    if ctx.out.machine:
        ctx.out.data(resp)
    else:
        ctx.out.message(
            f"imported {resp.imported}, updated {resp.updated}, skipped {resp.skipped}; "
            f"database version {resp.database_version}"
        )
        for e in resp.errors:
            ctx.out.message(f"  error: {e}")
    # The valid records are in; refused ones make the exit code say the input was not clean.
    return EXIT_INVALID if resp.errors else 0


def age(ts: Any, now: dt.datetime | None = None) -> str:
    """How long ago a Timestamp was, in the largest whole unit ("12 days", "3 hours")."""
    if ts is None or (ts.seconds == 0 and ts.nanos == 0):
        return ""
    now = now or dt.datetime.now(dt.UTC)
    seconds = max(0, int((now - ts.ToDatetime(dt.UTC)).total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} seconds"


def vulndb_status(ctx: Context) -> int:
    st = ctx.client.scanner.vulndb_status()
    if ctx.out.machine:
        ctx.out.data(st)
        return 0 if st.loaded else EXIT_NOT_FOUND
    if not st.loaded:
        ctx.out.message("no vulnerability data loaded: runs of policies whose rules read "
                        "vulnerabilities are blocked")
        ctx.out.message("import OSV records with: mirrorctl vulndb import FILE")
        return EXIT_NOT_FOUND
    ctx.out.record(st, [
        ("database version", lambda s: s.database_version),
        ("records", lambda s: s.records),
        ("updated", lambda s: when(s.update_time)),
        ("age", lambda s: age(s.update_time)),
    ])
    ctx.out.rows(list(st.sources), [
        ("SOURCE", lambda v: v.name), ("RECORDS", lambda v: v.records),
        ("UPDATED", lambda v: when(v.update_time)), ("AGE", lambda v: age(v.update_time)),
    ], empty="no sources")
    return 0


def _view_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vulns", action="store_true", help="list every vulnerability")
    p.add_argument("--components", action="store_true", help="list every component")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    grp = command(sub, "scan", help="scan images for components and vulnerabilities",
                  common=common, examples="  mirrorctl scan image dev/team/app:1.4")
    s = grp.add_subparsers(title="commands", metavar="COMMAND")
    p = command(s, "image", help="scan an image (cached per digest unless --force)", func=image,
                common=common, examples=(
                    "  mirrorctl scan image dev/team/app:1.4 --vulns\n"
                    "  mirrorctl scan image dev/team/app@sha256:... --force -o json"))
    p.add_argument("image", metavar="ENDPOINT/REPOSITORY:TAG")
    p.add_argument("--force", action="store_true", help="scan again even when cached")
    _view_flags(p)
    p = command(s, "show", help="show the cached report of a digest", func=show, common=common,
                examples="  mirrorctl scan show sha256:0123... --components")
    p.add_argument("digest")
    p.add_argument("--repository", default="",
                   help="the report made for this repository (default: the newest)")
    _view_flags(p)

    grp = command(sub, "vulndb", help="the scanner's vulnerability database", common=common,
                  examples="  mirrorctl vulndb import osv-debian.zip\n  mirrorctl vulndb status")
    s = grp.add_subparsers(title="commands", metavar="COMMAND")
    p = command(s, "import", help="import OSV records (JSON, or a zip of JSON files)",
                func=vulndb_import, common=common, examples=(
                    "  mirrorctl vulndb import osv-debian.zip\n"
                    "  mirrorctl vulndb import - < GHSA-xxxx.json\n"
                    "  mirrorctl vulndb import /srv/osv --server-path   # read by the scanner\n"
                    "records that are refused are listed and make the exit code 4; the valid "
                    "ones are imported"))
    p.add_argument("source", metavar="FILE", help="file to upload, - for stdin")
    p.add_argument("--server-path", action="store_true",
                   help="FILE is a path on the scanner's host (file, folder or zip)")
    command(s, "status", help="sources, record counts and age of the vulnerability data",
            func=vulndb_status, common=common, examples=(
                "  mirrorctl vulndb status\n  mirrorctl vulndb status -o json\n"
                "rules that read vulnerabilities block runs while the data is missing or "
                "older than the scanner's limit;\nexits 3 when no data was ever imported"))
