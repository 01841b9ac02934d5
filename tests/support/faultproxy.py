"""Fault proxy fixture: `fault_proxy(upstream_url)` starts one, stopped after the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from registry_testkit.faultproxy import FaultProxy

__all__ = ["FaultProxy"]


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[str], FaultProxy]]:
    started: list[FaultProxy] = []

    def make(upstream: str) -> FaultProxy:
        proxy = FaultProxy(upstream).start()
        started.append(proxy)
        return proxy

    yield make
    for p in started:
        p.stop()
