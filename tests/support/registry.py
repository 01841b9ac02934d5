"""Registry fixtures: anonymous HTTP, htpasswd over TLS, token auth; a factory for the rest."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from registry_testkit.registry import RegistryOptions, RegistryProcess, start_registry
from registry_testkit.token_server import TokenServer, TokenUser

# Users of the htpasswd registry (htpasswd auth grants every authenticated user all actions).
HTPASSWD_USERS = {"alice": "alice-secret-1", "bob": "bob-secret-2"}
# Users of the token registry: a read-write and a read-only one.
TOKEN_USERS = {
    "writer": TokenUser("writer-secret-1", frozenset({"pull", "push"})),
    "reader": TokenUser("reader-secret-2", frozenset({"pull"})),
}

RegistryFactory = Callable[..., RegistryProcess]


@pytest.fixture
def registry_factory(tmp_path: Path) -> Iterator[RegistryFactory]:
    """Call with RegistryOptions fields (tls=, htpasswd_users=, token_server=, notifications=)."""
    with ExitStack() as stack:
        count = 0

        def make(**kw: object) -> RegistryProcess:
            nonlocal count
            count += 1
            opts = RegistryOptions(**kw)  # type: ignore[arg-type]
            return stack.enter_context(start_registry(opts, tmp_path / f"registry-{count}"))

        yield make


@pytest.fixture
def registry(registry_factory: RegistryFactory) -> RegistryProcess:
    """An anonymous HTTP registry."""
    return registry_factory()


@pytest.fixture
def registry2(registry_factory: RegistryFactory) -> RegistryProcess:
    """A second anonymous HTTP registry (a copy destination)."""
    return registry_factory()


@pytest.fixture
def tls_registry(registry_factory: RegistryFactory) -> RegistryProcess:
    """htpasswd (bcrypt) users HTPASSWD_USERS over TLS with a trustme CA (`.ca_pem`)."""
    return registry_factory(tls=True, htpasswd_users=dict(HTPASSWD_USERS))


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[TokenServer]:
    with TokenServer(tmp_path / "token", users=dict(TOKEN_USERS)) as ts:
        yield ts


@pytest.fixture
def token_registry(registry_factory: RegistryFactory, token_server: TokenServer) -> RegistryProcess:
    """Token auth against `token_server` (users TOKEN_USERS: writer rw, reader ro)."""
    return registry_factory(token_server=token_server)
