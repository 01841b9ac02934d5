"""Parsing the registry's notification envelope."""

from __future__ import annotations

import json

import pytest

from gateway.webhook import EnvelopeError, host_of_url, parse_body

OCI = "application/vnd.oci.image.manifest.v1+json"
DIGEST = "sha256:" + "a" * 64


def push(eid: str = "e1", tag: str | None = "1.0-stable", media: str = OCI, **kw: object) -> dict:
    target: dict[str, object] = {
        "mediaType": media,
        "digest": DIGEST,
        "size": 123,
        "repository": "dev/website",
        "url": f"http://127.0.0.1:5000/v2/dev/website/manifests/{DIGEST}",
    }
    if tag is not None:
        target["tag"] = tag
    ev: dict[str, object] = {
        "id": eid,
        "timestamp": "2026-11-26T10:00:00Z",
        "action": "push",
        "target": target,
        "request": {"id": "r", "addr": "127.0.0.1:1", "host": "127.0.0.1:5000", "method": "PUT"},
        "actor": {},
        "source": {"addr": "x:5000", "instanceID": "i"},
    }
    ev.update(kw)
    return ev


def body(*events: object) -> bytes:
    return json.dumps({"events": list(events)}).encode()


def test_tagged_manifest_push_is_acted_on() -> None:
    parsed = parse_body(body(push()))
    assert len(parsed.pushes) == 1
    p = parsed.pushes[0]
    assert (p.event_id, p.repository, p.tag) == ("e1", "dev/website", "1.0-stable")
    assert p.digest == DIGEST
    assert p.hosts == ("127.0.0.1:5000",)
    assert not parsed.ignored and not parsed.rejected


@pytest.mark.parametrize(
    "media",
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ],
)
def test_every_manifest_media_type_counts(media: str) -> None:
    assert len(parse_body(body(push(media=media))).pushes) == 1


def test_blob_push_pull_and_push_by_digest_are_ignored() -> None:
    blob = push("b", media="application/vnd.oci.image.layer.v1.tar+gzip")
    pull = push("p", action="pull")
    by_digest = push("d", tag=None)
    mount = push("m", action="mount")
    parsed = parse_body(body(blob, pull, by_digest, mount))
    assert parsed.pushes == []
    assert sorted(a for a, _ in parsed.ignored) == ["mount", "pull", "push", "push"]
    assert parsed.rejected == []


@pytest.mark.parametrize("raw", [b"not json", b"[1,2]", b'{"events": 3}', b"{}", b"\xff\xfe"])
def test_a_body_that_is_not_an_envelope_is_an_error(raw: bytes) -> None:
    with pytest.raises(EnvelopeError):
        parse_body(raw)


def test_malformed_events_are_reported_next_to_good_ones() -> None:
    no_id = push()
    del no_id["id"]
    bad_repo = push("e2")
    bad_repo["target"]["repository"] = "Not A Repo"  # type: ignore[index]
    bad_digest = push("e3")
    bad_digest["target"]["digest"] = "nope"  # type: ignore[index]
    parsed = parse_body(body(push("ok"), no_id, bad_repo, bad_digest, "x"))
    assert [p.event_id for p in parsed.pushes] == ["ok"]
    reasons = {i: (eid, why) for i, eid, why in parsed.rejected}
    assert set(reasons) == {1, 2, 3, 4}
    assert "id" in reasons[1][1]
    assert reasons[2][0] == "e2" and "repository" in reasons[2][1]
    assert "digest" in reasons[3][1]


def test_hosts_come_from_request_host_and_target_url() -> None:
    ev = push()
    ev["request"]["host"] = "registry.example.com"  # type: ignore[index]
    ev["target"]["url"] = "https://dev.example.com/v2/dev/website/manifests/x"  # type: ignore[index]
    (p,) = parse_body(body(ev)).pushes
    assert p.hosts == ("registry.example.com:80", "registry.example.com:443", "dev.example.com:443")


def test_host_of_url_normalizes_default_ports() -> None:
    assert host_of_url("http://Example.COM") == "example.com:80"
    assert host_of_url("https://example.com/") == "example.com:443"
    assert host_of_url("http://127.0.0.1:5000") == "127.0.0.1:5000"
    assert host_of_url("127.0.0.1:5000") == "127.0.0.1:5000"
    assert host_of_url("http://[::1]:5000") == "[::1]:5000"
    assert host_of_url("") == ""


def test_digest_must_be_well_formed() -> None:
    from registry_client.names import is_digest as is_valid_digest

    assert is_valid_digest(DIGEST)
    assert not is_valid_digest("sha256:zz")
    assert not is_valid_digest("sha256:" + "A" * 64)
    assert not is_valid_digest("nodigest")
