"""The repositories of a registry for glob sources (the shared client's `/v2/_catalog` call)."""

from __future__ import annotations

from typing import Protocol

# Repositories asked per catalog page; the client follows Link pagination.
PAGE_SIZE = 1000


class CatalogClient(Protocol):
    """The part of registry_client.RegistryClient the catalog needs."""

    async def list_repositories(self, page_size: int = 0) -> list[str]: ...


async def list_repositories(rc: CatalogClient, page_size: int = PAGE_SIZE) -> list[str]:
    """Every repository name the registry lists (it may list only what the account can see),
    sorted and without repeats (pages of a registry changing meanwhile may overlap)."""
    return sorted(set(await rc.list_repositories(page_size=page_size)))
