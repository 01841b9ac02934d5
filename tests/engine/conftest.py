"""Engine test helpers: clients for test registries and an engine with a 1 MiB spool threshold."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from registry_client import RegistryClient, RegistryConfig
from tests.engine.pacing_proxy import PacingProxy
from transfer_service.engine import CopyEngine


@pytest.fixture
def engine(tmp_path: Path) -> CopyEngine:
    return CopyEngine(tmp_path / "spool", spool_threshold=1 << 20, backoff_base=0.01)


@pytest.fixture
async def clients() -> AsyncIterator[Any]:
    """`await clients(registry_or_url, user=None)` -> an open RegistryClient, closed afterwards."""
    opened: list[RegistryClient] = []

    def make(target: Any, user: str | None = None, **kw: Any) -> RegistryClient:
        if isinstance(target, str):
            cfg = RegistryConfig(url=target, backoff_base=0.01, **kw)
        else:
            cfg = target.client_config(user, backoff_base=0.01, **kw)
        rc = RegistryClient(cfg)
        opened.append(rc)
        return rc

    yield make
    for rc in opened:
        await rc.close()


@pytest.fixture
def pacing_proxy() -> Iterator[Callable[[str], PacingProxy]]:
    """`pacing_proxy(upstream_url)` starts a streaming PacingProxy, stopped after the test."""
    started: list[PacingProxy] = []

    def make(upstream: str) -> PacingProxy:
        proxy = PacingProxy(upstream).start()
        started.append(proxy)
        return proxy

    yield make
    for p in started:
        p.stop()
