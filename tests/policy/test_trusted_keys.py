"""Trusted keys over a real grpc.aio server: create/get/list/delete, the key types accepted,
fingerprints, errors with the right codes, kept over a restart."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from mirror.v1 import policy_pb2

from tests.policy.policy_servicer_support import (  # noqa: F401  (fixtures)
    PolicyEnv,
    env,
    field_violations,
    serving,
    transfer_double,
)

Pub = serialization.PublicFormat.SubjectPublicKeyInfo


def pem(private: object) -> str:
    return private.public_key().public_bytes(serialization.Encoding.PEM, Pub).decode()  # type: ignore[attr-defined]


def fingerprint(private: object) -> str:
    der = private.public_key().public_bytes(serialization.Encoding.DER, Pub)  # type: ignore[attr-defined]
    return hashlib.sha256(der).hexdigest()


async def create(env: PolicyEnv, name: str, key_pem: str) -> policy_pb2.TrustedKey:  # noqa: F811
    return await env.stub.CreateTrustedKey(policy_pb2.CreateTrustedKeyRequest(
        key=policy_pb2.TrustedKey(name=name, public_key_pem=key_pem)))


async def refused(env: PolicyEnv, name: str, key_pem: str) -> grpc.RpcError:  # noqa: F811
    with pytest.raises(grpc.RpcError) as info:
        await create(env, name, key_pem)
    return info.value


async def test_create_get_list_delete(env: PolicyEnv) -> None:  # noqa: F811
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    ci = await create(env, "ci", pem(ec_key))
    assert (ci.name, ci.algorithm, ci.fingerprint) == ("ci", "ecdsa-p256", fingerprint(ec_key))
    assert ci.public_key_pem == pem(ec_key) and ci.create_time.seconds > 0
    rel = await create(env, "release_2", pem(ed_key))
    assert (rel.algorithm, rel.fingerprint) == ("ed25519", fingerprint(ed_key))
    assert await env.stub.GetTrustedKey(policy_pb2.GetTrustedKeyRequest(name="ci")) == ci
    listed = await env.stub.ListTrustedKeys(policy_pb2.ListTrustedKeysRequest())
    assert list(listed.keys) == [ci, rel] and not listed.next_page_token
    # Paging: one a page, in name order.
    first = await env.stub.ListTrustedKeys(policy_pb2.ListTrustedKeysRequest(page_size=1))
    assert [k.name for k in first.keys] == ["ci"] and first.next_page_token
    second = await env.stub.ListTrustedKeys(policy_pb2.ListTrustedKeysRequest(
        page_size=1, page_token=first.next_page_token))
    assert [k.name for k in second.keys] == ["release_2"] and not second.next_page_token
    await env.stub.DeleteTrustedKey(policy_pb2.DeleteTrustedKeyRequest(name="ci"))
    with pytest.raises(grpc.RpcError) as info:
        await env.stub.GetTrustedKey(policy_pb2.GetTrustedKeyRequest(name="ci"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        await env.stub.DeleteTrustedKey(policy_pb2.DeleteTrustedKeyRequest(name="ci"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await env.stub.ListTrustedKeys(policy_pb2.ListTrustedKeysRequest())
    assert [k.name for k in listed.keys] == ["release_2"]


async def test_a_name_is_taken_once(env: PolicyEnv) -> None:  # noqa: F811
    await create(env, "ci", pem(ed25519.Ed25519PrivateKey.generate()))
    err = await refused(env, "ci", pem(ed25519.Ed25519PrivateKey.generate()))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS and "'ci'" in (err.details() or "")


@pytest.mark.parametrize("name", ["", "CI", "ci key", "-ci", "ci/x", "k" * 64])
async def test_bad_names_are_refused(env: PolicyEnv, name: str) -> None:  # noqa: F811
    err = await refused(env, name, pem(ed25519.Ed25519PrivateKey.generate()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "key.name" in field_violations(err)


@pytest.mark.parametrize(("make", "words"), [
    (lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), "only ECDSA P-256"),
    (lambda: ec.generate_private_key(ec.SECP384R1()), "curve P-256 (this one is secp384r1)"),
    (lambda: ed448.Ed448PrivateKey.generate(), "only ECDSA P-256 and Ed25519"),
    (lambda: dsa.generate_private_key(key_size=2048), "only ECDSA P-256"),
])
async def test_other_key_types_are_refused(env: PolicyEnv, make: object, words: str) -> None:  # noqa: F811
    err = await refused(env, "ci", pem(make()))  # type: ignore[operator]
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in field_violations(err)["key.public_key_pem"]


@pytest.mark.parametrize("text", [
    "",
    "not a key",
    "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
])
async def test_what_is_not_a_pem_public_key_is_refused(env: PolicyEnv, text: str) -> None:  # noqa: F811
    err = await refused(env, "ci", text)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "key.public_key_pem" in field_violations(err)


async def test_a_private_key_is_refused_and_not_echoed(env: PolicyEnv) -> None:  # noqa: F811
    private = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    err = await refused(env, "ci", private)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    body = private.splitlines()[1]
    assert body not in (err.details() or "")
    assert all(body not in v for v in field_violations(err).values())


async def test_unknown_key_answers_not_found(env: PolicyEnv) -> None:  # noqa: F811
    with pytest.raises(grpc.RpcError) as info:
        await env.stub.GetTrustedKey(policy_pb2.GetTrustedKeyRequest(name="nobody"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as info:
        await env.stub.GetTrustedKey(policy_pb2.GetTrustedKeyRequest(name=""))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_keys_survive_a_restart(
    tmp_path: Path, transfer_double: tuple[object, int]  # noqa: F811
) -> None:
    async with serving(tmp_path, transfer_double) as e:  # type: ignore[arg-type]
        made = await create(e, "ci", pem(ec.generate_private_key(ec.SECP256R1())))
    async with serving(tmp_path, transfer_double) as e:  # type: ignore[arg-type]
        assert await e.stub.GetTrustedKey(policy_pb2.GetTrustedKeyRequest(name="ci")) == made
