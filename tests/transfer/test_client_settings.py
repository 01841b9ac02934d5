"""The transfer service's registry client settings reach every client it builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from registry_client import RegistryConfig
from transfer_service.__main__ import parse_args
from transfer_service.endpoints import EndpointRecord
from transfer_service.servicer import TransferServicer

DEFAULTS = RegistryConfig(url="http://registry.example")


@pytest.mark.parametrize(
    ("kw", "want"),
    [
        ({}, (DEFAULTS.idle_timeout, DEFAULTS.retry_after_cap)),
        ({"idle_timeout": 4.5, "retry_after_cap": 7.0}, (4.5, 7.0)),
        ({"retry_after_cap": 0.0}, (DEFAULTS.idle_timeout, 0.0)),
    ],
)
async def test_idle_timeout_and_retry_after_cap_reach_config_for(
    tmp_path: Path, kw: dict[str, Any], want: tuple[float, float]
) -> None:
    ts = TransferServicer.open(tmp_path / "data", **kw)
    try:
        ts.endpoints.create(EndpointRecord(name="dev", url="http://127.0.0.1:5999"))
        cfg = ts.endpoints.config_for("dev")
        assert (cfg.idle_timeout, cfg.retry_after_cap) == want
    finally:
        await ts.stop()


def test_command_line_flags(tmp_path: Path) -> None:
    args = parse_args(["--data", str(tmp_path), "--idle-timeout", "12", "--retry-after-cap", "3"])
    assert (args.idle_timeout, args.retry_after_cap) == (12.0, 3.0)
    assert parse_args(["--data", str(tmp_path)]).idle_timeout is None
    with pytest.raises(SystemExit):
        parse_args(["--data", str(tmp_path), "--idle-timeout", "0"])
