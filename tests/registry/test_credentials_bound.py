"""Credentials are bound to the registry they were given for: a capture server of the tests'
own on another host (127.0.0.2) that answers 401 Basic never receives the password, however
the registry points at it (token realm over plain http, a redirect, an upload Location)."""

from __future__ import annotations

import pytest
from aiohttp import web

from registry_client import RegistryClient, RegistryConfig, errors
from registry_client.client import sha256_digest
from tests.registry.hostile import basic_challenge, hostile_server

PASSWORD = "s3cret-QA-password"


def _config(url: str) -> RegistryConfig:
    return RegistryConfig(url=url, username="ci", password=PASSWORD, max_attempts=2)


def _authorized(request: web.Request) -> bool:
    return request.headers.get("Authorization", "").startswith("Basic ")


async def test_the_capture_server_sees_credentials_sent_to_it() -> None:
    # The control: as the registry itself, the capture does receive the password, so the
    # tests below would notice a leak.
    async with (
        hostile_server(basic_challenge) as capture,
        RegistryClient(_config(capture.url)) as rc,
    ):
        with pytest.raises(errors.AuthenticationError):
            await rc.ping()
    assert capture.leaked(PASSWORD)


@pytest.mark.parametrize(
    ("realm_host", "gets_password"), [("127.0.0.1", True), ("127.0.0.2", False)]
)
async def test_token_realm_over_http_gets_credentials_only_on_the_same_host(
    realm_host: str, gets_password: bool
) -> None:
    async with hostile_server(basic_challenge, host=realm_host) as realm:

        async def registry_handler(request: web.Request) -> web.Response:
            return web.Response(
                status=401,
                headers={"WWW-Authenticate": f'Bearer realm="{realm.url}/token",service="reg"'},
            )

        async with (
            hostile_server(registry_handler) as registry,
            RegistryClient(_config(registry.url)) as rc,
        ):
            with pytest.raises(errors.AuthenticationError) as info:
                await rc.ping()
    assert realm.seen, "the token realm was never asked"
    assert bool(realm.leaked(PASSWORD)) is gets_password
    if not gets_password:
        assert "https" in str(info.value)
        assert PASSWORD not in str(info.value)
    assert all(s.headers.get("User-Agent", "").startswith("image-mirror/") for s in realm.seen)


async def test_redirect_to_another_host_asking_for_basic_gets_nothing() -> None:
    async with hostile_server(basic_challenge, host="127.0.0.2") as capture:

        async def registry_handler(request: web.Request) -> web.Response:
            if not _authorized(request):
                return await basic_challenge(request)
            raise web.HTTPTemporaryRedirect(capture.url + request.path_qs)

        async with (
            hostile_server(registry_handler) as registry,
            RegistryClient(_config(registry.url)) as rc,
        ):
            with pytest.raises(errors.AuthenticationError) as info:
                await rc.ping()
    assert capture.seen, "the redirect was never followed"
    assert capture.leaked(PASSWORD) == []
    assert registry.leaked(PASSWORD)  # the registry's own origin did get them
    assert capture.url.removeprefix("http://") in str(info.value)


async def test_upload_location_on_another_host_gets_no_credentials() -> None:
    async with hostile_server(basic_challenge, host="127.0.0.2") as capture:

        async def registry_handler(request: web.Request) -> web.Response:
            if not _authorized(request):
                return await basic_challenge(request)
            # A registry (or something in its place) sends the upload elsewhere.
            return web.Response(status=202, headers={"Location": capture.url + "/upload/1"})

        async with (
            hostile_server(registry_handler) as registry,
            RegistryClient(_config(registry.url)) as rc,
        ):
            data = b"layer bytes"
            with pytest.raises(errors.AuthenticationError):
                await rc.upload_blob("team/app", sha256_digest(data), data)
    assert [s.method for s in capture.seen] == ["PUT"]
    assert capture.leaked(PASSWORD) == []
    assert "Authorization" not in capture.seen[0].headers
    assert registry.leaked(PASSWORD)
