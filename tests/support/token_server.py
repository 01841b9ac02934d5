"""The test token issuer (see registry_testkit.token_server); fixture in support.registry."""

from __future__ import annotations

from registry_testkit.token_server import TokenServer, TokenUser

__all__ = ["TokenServer", "TokenUser"]
