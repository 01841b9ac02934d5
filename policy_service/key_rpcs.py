"""PolicyService's trusted-key RPCs (Create/Get/List/DeleteTrustedKey) and the checks that tie
keys to policies: a rule naming an unknown key in `signed_by` is refused at save, and a key a
policy's rule names cannot be deleted.

A mixin of PolicyServicer: it uses the servicer's `_keys` (KeyStore), `_policies`,
`_write_lock`, and `_refresh` / `_commit` (which keep replicas consistent, see
policy_service.changes).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from google.protobuf import empty_pb2
from grpc import aio
from mirror.v1 import policy_pb2

from policy_service.trusted_keys import (
    KeyExists,
    KeyProblem,
    KeyStore,
    TrustedKey,
    name_error,
    parse_public_key,
)
from servicekit import errors, paging

if TYPE_CHECKING:
    from policy_service.compiled import CompiledPolicy
    from policy_service.store import PolicyRecord

# Fallback when a compiled rule does not list its keys: `signed_by "NAME"` in its text.
_SIGNED_BY = re.compile(r'\bsigned_by\s+"([^"\\]*)"')


def rule_keys(rule: Any) -> frozenset[str]:
    """The key names a compiled rule's `signed_by` clauses name."""
    names = getattr(rule, "signed_by_keys", None)
    if names is not None:
        return frozenset(names)
    return text_keys(getattr(rule, "source", ""))


def text_keys(rule: str) -> frozenset[str]:
    """The key names `signed_by "NAME"` clauses of a rule's text name (also a stored rule
    that no longer compiles: its key stays protected)."""
    return frozenset(_SIGNED_BY.findall(rule)) if "signed_by" in rule else frozenset()


def unknown_key_problem(rule: Any, known: Iterable[str]) -> str:
    """Why a rule cannot be saved for want of keys ("" when every key it names exists)."""
    missing = sorted(rule_keys(rule) - set(known))
    if not missing:
        return ""
    return (
        f"the rule's signed_by names {', '.join(repr(n) for n in missing)}, which "
        f"{'is not a trusted key' if len(missing) == 1 else 'are not trusted keys'}; "
        "register it first (CreateTrustedKey, mirrorctl key create)"
    )


def check_rule_keys(cp: CompiledPolicy, keys: KeyStore) -> None:
    """FAILED_PRECONDITION when the policy's rule names a key that is not registered."""
    problem = unknown_key_problem(cp.rule, keys.names())
    if problem:
        raise errors.failed_precondition(
            f"policy {cp.record.name!r}: {problem}",
            [("TRUSTED_KEY_MISSING", "policy.rule", problem)],
        )


class TrustedKeyRpcs:
    """The trusted-key half of PolicyServicer."""

    _keys: KeyStore
    _policies: dict[str, CompiledPolicy]
    _broken: dict[str, PolicyRecord]
    _write_lock: asyncio.Lock
    _refresh: Callable[[], Awaitable[None]]
    _commit: Callable[[Callable[[], Callable[[int], int] | None]], Awaitable[bool]]

    def _key_named(self, name: str) -> TrustedKey:
        if not name:
            raise errors.invalid_argument("name is required", [("name", "must not be empty")])
        key = self._keys.get(name)
        if key is None:
            raise errors.not_found(f"trusted key {name!r} not found", reason="KEY_NOT_FOUND")
        return key

    async def CreateTrustedKey(
        self, request: policy_pb2.CreateTrustedKeyRequest, context: aio.ServicerContext
    ) -> policy_pb2.TrustedKey:
        k = request.key
        violations = []
        problem = name_error(k.name)
        if problem:
            violations.append(("key.name", problem))
        parsed = None
        try:
            parsed = parse_public_key(k.public_key_pem)
        except KeyProblem as err:
            violations.append(("key.public_key_pem", str(err)))
        if violations or parsed is None:
            raise errors.invalid_argument(
                "invalid trusted key: " + "; ".join(f"{f}: {d}" for f, d in violations),
                violations,
            )
        key, algorithm, fingerprint = parsed
        rec = TrustedKey(
            name=k.name, public_key_pem=k.public_key_pem, algorithm=algorithm,
            fingerprint=fingerprint, create_time_us=time.time_ns() // 1000, key=key,
        )
        async with self._write_lock:
            try:
                await self._commit(lambda: lambda seq: self._keys.insert(rec, seq))
            except KeyExists as err:
                raise errors.already_exists(
                    f"a trusted key named {k.name!r} already exists"
                ) from err
        return rec.to_proto()

    async def GetTrustedKey(
        self, request: policy_pb2.GetTrustedKeyRequest, context: aio.ServicerContext
    ) -> policy_pb2.TrustedKey:
        await self._refresh()
        return self._key_named(request.name).to_proto()

    async def ListTrustedKeys(
        self, request: policy_pb2.ListTrustedKeysRequest, context: aio.ServicerContext
    ) -> policy_pb2.ListTrustedKeysResponse:
        size = paging.page_size(request.page_size)
        state = paging.decode_token(request.page_token, expect={})
        await self._refresh()
        keys = self._keys.page(str(state.get("after", "")), size + 1)
        out = policy_pb2.ListTrustedKeysResponse(keys=[k.to_proto() for k in keys[:size]])
        if len(keys) > size:
            out.next_page_token = paging.encode_token({"after": keys[size - 1].name})
        return out

    async def DeleteTrustedKey(
        self, request: policy_pb2.DeleteTrustedKeyRequest, context: aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self._refresh()
        self._key_named(request.name)
        found: list[bool] = []

        def prepare() -> Callable[[int], int]:
            self._refuse_if_used(request.name)  # against the up-to-date policies

            def write(seq: int) -> int:
                done = self._keys.delete(request.name, seq)
                found[:] = [done is not None]
                return seq if done is None else done

            return write

        async with self._write_lock:
            await self._commit(prepare)
            if not found[0]:
                raise errors.not_found(f"trusted key {request.name!r} not found")
        return empty_pb2.Empty()

    def _refuse_if_used(self, name: str) -> None:
        """FAILED_PRECONDITION when a policy's rule names key `name`."""
        users = sorted(
            [p.record.name for p in self._policies.values() if name in rule_keys(p.rule)]
            + [r.name for r in self._broken.values() if name in text_keys(r.rule)]
        )
        if users:
            raise errors.failed_precondition(
                f"trusted key {name!r} is named by the rule of "
                f"{len(users)} polic{'y' if len(users) == 1 else 'ies'}: "
                + ", ".join(repr(u) for u in users[:10])
                + (f" and {len(users) - 10} more" if len(users) > 10 else "")
                + "; change those rules first",
                [("TRUSTED_KEY_IN_USE", f"policies/{u}", "its rule names the key")
                 for u in users[:10]],
            )
