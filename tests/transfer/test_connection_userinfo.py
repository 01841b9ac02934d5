"""A connection check never names the userinfo of the URL it was given (it shows base_url)."""

from __future__ import annotations

import pytest

from registry_client import RegistryConfig
from registry_testkit.ports import free_port
from registry_testkit.registry import RegistryProcess
from transfer_service.connection_check import check_connection

pytestmark = pytest.mark.registry


@pytest.mark.parametrize("reachable", [True, False], ids=["reachable", "unreachable"])
async def test_step_messages_name_the_host_without_userinfo(
    registry: RegistryProcess, reachable: bool
) -> None:
    host = registry.host if reachable else f"127.0.0.1:{free_port()}"
    cfg = RegistryConfig(url=f"http://ci:hunter2@{host}", max_attempts=1, backoff_base=0.01)
    report = await check_connection(cfg, "dev/app", check_push=False)
    messages = " ".join(c.message for c in report.checks)
    assert host in messages and "hunter2" not in messages and "ci:" not in messages
    assert report.ok is reachable
