"""The test kit itself: registries start in every variant, skopeo pushes built images."""

from __future__ import annotations

import hashlib
import json
import urllib.request

from registry_testkit.faultproxy import FaultProxy
from registry_testkit.registry import RegistryProcess
from tests.support.images import ImageBuilder, digest_of, inspect_raw, list_tags, push
from tests.support.registry import HTPASSWD_USERS


def test_push_index_and_inspect_byte_exact(registry: RegistryProcess, images: ImageBuilder) -> None:
    img = images.index("v1", platforms=["linux/amd64", "linux/arm64/v8"], layers=[4096, 2048])
    push(img, registry, "team/app")
    raw = inspect_raw(registry, "team/app", "v1")
    assert raw == img.manifest
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == img.digest
    assert json.loads(raw)["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert list_tags(registry, "team/app") == ["v1"]
    for child in img.children:
        assert digest_of(registry, "team/app", child.digest) == child.digest


def test_docker_media_types(registry: RegistryProcess, images: ImageBuilder) -> None:
    img = images.image("d1", layers=[1000], docker=True)
    push(img, registry, "docker/app")
    doc = json.loads(inspect_raw(registry, "docker/app", "d1"))
    assert doc["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    lst = images.index("l1", platforms=["linux/amd64", "linux/arm/v7"], docker=True)
    push(lst, registry, "docker/list")
    raw = inspect_raw(registry, "docker/list", "l1")
    assert raw == lst.manifest
    assert (
        json.loads(raw)["mediaType"] == "application/vnd.docker.distribution.manifest.list.v2+json"
    )


def test_tls_htpasswd_needs_credentials(
    tls_registry: RegistryProcess, images: ImageBuilder
) -> None:
    img = images.image("t1")
    push(img, tls_registry, "secure/app", user="alice")
    assert digest_of(tls_registry, "secure/app", "t1", user="bob") == img.digest
    req = urllib.request.Request(f"{tls_registry.url}/v2/")
    try:
        urllib.request.urlopen(req, context=tls_registry.ssl_context())
        raise AssertionError("anonymous request was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 401
    assert set(HTPASSWD_USERS) == {"alice", "bob"}


def test_token_registry_reader_cannot_push(
    token_registry: RegistryProcess, images: ImageBuilder
) -> None:
    img = images.image("r1")
    push(img, token_registry, "tok/app", user="writer")
    assert digest_of(token_registry, "tok/app", "r1", user="reader") == img.digest
    try:
        push(img, token_registry, "tok/other", user="reader")
        raise AssertionError("read-only user pushed")
    except RuntimeError as e:
        assert "denied" in str(e).lower() or "unauthorized" in str(e).lower()


def test_fault_proxy_counts_and_corrupts(registry: RegistryProcess, images: ImageBuilder) -> None:
    img = images.image("f1", layers=[10_000])
    push(img, registry, "p/app")
    layer = img.blobs[1]
    with FaultProxy(registry.url) as proxy:
        proxy.corrupt_blob(layer.digest, times=1)
        proxy.status(r"/v2/$", 429, times=1, retry_after="1")
        url = f"{proxy.url}/v2/p/app/blobs/{layer.digest}"
        bad = urllib.request.urlopen(url).read()
        good = urllib.request.urlopen(url).read()
        assert hashlib.sha256(good).hexdigest() == layer.digest.split(":")[1]
        assert bad != good and len(bad) == len(good)
        try:
            urllib.request.urlopen(f"{proxy.url}/v2/")
            raise AssertionError("no 429")
        except urllib.error.HTTPError as e:
            assert e.code == 429 and e.headers["Retry-After"] == "1"
        assert len(proxy.requests("GET", "/blobs/")) == 2


def test_notifications_reach_the_endpoint(registry_factory, images: ImageBuilder) -> None:
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    got: list[tuple[str, dict]] = []

    class Receiver(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.append((self.headers.get("Authorization", ""), json.loads(body)))
            self.send_response(200)
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/events"
        reg = registry_factory(
            notifications=[{"name": "gw", "url": url, "headers": {"Authorization": ["Bearer s3"]}}]
        )
        img = images.image("n1")
        push(img, reg, "note/app")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pushes = [
                e
                for _, doc in got
                for e in doc["events"]
                if e["action"] == "push" and e["target"].get("tag") == "n1"
            ]
            if pushes:
                break
            time.sleep(0.1)
        assert pushes and pushes[0]["target"]["digest"] == img.digest
        assert all(auth == "Bearer s3" for auth, _ in got)
    finally:
        server.shutdown()
