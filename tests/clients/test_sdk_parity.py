"""The asyncio client offers every method of the blocking one (issue 15: `get_by_name` was
missing from `mirror.aio.Policies`), on every service facade and on the client itself."""

from __future__ import annotations

import inspect

import pytest
from mirror import aio, client


def _public(cls: type) -> set[str]:
    return {name for name, value in vars(cls).items()
            if not name.startswith("_") and (callable(value) or isinstance(value, property))}


@pytest.mark.parametrize(("blocking", "asyncio"), [
    (client.Policies, aio.Policies), (client.Transfers, aio.Transfers),
    (client.Gateway, aio.Gateway), (client.Scanner, aio.Scanner),
    (client.Client, aio.AsyncClient),
])
def test_asyncio_has_every_blocking_method(blocking: type, asyncio: type) -> None:
    assert _public(blocking) - _public(asyncio) == set()
    assert _public(asyncio) - _public(blocking) == set()


def test_get_by_name_is_awaited_with_the_same_signature() -> None:
    twin = aio.Policies.get_by_name
    assert inspect.iscoroutinefunction(twin)
    assert inspect.signature(twin) == inspect.signature(client.Policies.get_by_name)
    assert twin.__doc__ == client.Policies.get_by_name.__doc__
