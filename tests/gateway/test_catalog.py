"""The registry catalog through the shared client: Link pagination, auth, repeated links."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.catalog import list_repositories
from registry_client import RegistryClient
from registry_testkit.images import ImageBuilder, push
from registry_testkit.registry import RegistryProcess
from tests.support.registry import HTPASSWD_USERS

pytestmark = pytest.mark.registry

REPOS = ["team/app-a", "team/app-b", "other/app-c", "solo"]


async def test_catalog_follows_link_pages(registry: RegistryProcess, tmp_path: Path) -> None:
    img = ImageBuilder(tmp_path / "img").image("v1")
    for repo in REPOS:
        push(img, registry, repo)
    async with RegistryClient(registry.client_config()) as rc:
        # 2 per page: 2.8.2 answers with a Link to the next page three times.
        paged = await rc.list_repositories(page_size=2)
        whole = await rc.list_repositories()
        assert sorted(paged) == sorted(REPOS) and len(paged) == len(REPOS)
        assert sorted(whole) == sorted(REPOS)
        assert await list_repositories(rc, page_size=3) == sorted(REPOS)


async def test_catalog_with_basic_auth_over_tls(
    tls_registry: RegistryProcess, tmp_path: Path
) -> None:
    user = "alice"
    img = ImageBuilder(tmp_path / "img").image("v1")
    push(img, tls_registry, "secure/app", user=user, password=HTPASSWD_USERS[user])
    async with RegistryClient(tls_registry.client_config(user)) as rc:
        assert await rc.list_repositories(page_size=1) == ["secure/app"]


async def test_empty_registry_lists_nothing(registry: RegistryProcess) -> None:
    async with RegistryClient(registry.client_config()) as rc:
        assert await rc.list_repositories() == []
