"""Peak memory of a copy stays flat when the blob grows (spooled and streamed paths)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from registry_testkit.registry import RegistryProcess
from tests.support.images import ImageBuilder, inspect_raw, push

pytestmark = pytest.mark.registry

_CHILD = textwrap.dedent("""
    import asyncio, resource, sys
    from registry_client import RegistryClient, RegistryConfig
    from transfer_service.engine import CopyEngine, CopyRequest

    async def main(src, dst, repo, spool, threshold):
        engine = CopyEngine(spool, spool_threshold=int(threshold))
        async with RegistryClient(RegistryConfig(url=src)) as s, \\
                RegistryClient(RegistryConfig(url=dst)) as d:
            await engine.copy(CopyRequest(src=s, src_repo=repo, src_ref="v1", dst=d,
                                          dst_repo=repo, dst_tag="v1"))
    asyncio.run(main(*sys.argv[1:]))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
""")


def _peak_rss_kib(
    src: RegistryProcess, dst: RegistryProcess, repo: str, spool: Path, threshold: int
) -> int:
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, src.url, dst.url, repo, str(spool), str(threshold)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=root,
        check=True,
    )
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("threshold", [1 << 20, 1 << 40], ids=["spooled", "streamed"])
def test_peak_rss_does_not_grow_with_blob_size(
    registry: RegistryProcess,
    registry2: RegistryProcess,
    images: ImageBuilder,
    tmp_path: Path,
    threshold: int,
) -> None:
    small, large = images.image("v1", layers=[8 << 20]), images.image("v1", layers=[64 << 20])
    push(small, registry, "mem/small")
    push(large, registry, "mem/large")
    rss_small = _peak_rss_kib(registry, registry2, "mem/small", tmp_path / "spool", threshold)
    rss_large = _peak_rss_kib(registry, registry2, "mem/large", tmp_path / "spool", threshold)
    assert inspect_raw(registry2, "mem/large", "v1") == large.manifest
    # 56 MiB more data must cost (far) less than 16 MiB more peak memory.
    assert rss_large - rss_small < 16 * 1024, (rss_small, rss_large)
