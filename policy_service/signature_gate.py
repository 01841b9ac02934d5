"""Signatures in Evaluate: verify once per request, then say why a policy reading them did not
match and whether it should wait for a signature that has not arrived yet.

Waiting (PolicyResult.wait_for_signature) is asked only when no signature was found at all,
the policy (or the service default) has a wait, and a verified signature would make the rule
match; when signatures exist but none verifies, the result is decided now.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from google.protobuf import duration_pb2
from mirror.v1 import common_pb2, policy_pb2

from policy_service import signatures
from policy_service.compiled import CompiledPolicy
from policy_service.key_rpcs import rule_keys
from policy_service.rules import Facts
from policy_service.rules.facts import SignatureFact
from policy_service.trusted_keys import KeyStore

SIGNATURES = common_pb2.FACT_KIND_SIGNATURES
# Up to this many signature x key checks run inline (a few ms); more go to a thread.
INLINE_VERIFICATIONS = 8


def reads_signatures(p: CompiledPolicy) -> bool:
    return SIGNATURES in p.required


class SignatureGate:
    """Verification against `keys`; `default_wait_us` applies to policies without their own
    signature_wait (0: decide at once)."""

    def __init__(self, keys: KeyStore, default_wait_us: int = 0) -> None:
        self.keys = keys
        self.default_wait_us = default_wait_us

    async def verify(self, f: common_pb2.ImageFacts) -> list[common_pb2.SignatureFact]:
        """The request's signatures with verified_by / problem from the trusted keys; many
        verifications (~0.2-0.5 ms each) run in a thread, off the event loop."""
        keys = self.keys.all()
        if not f.signatures:
            return []
        if len(f.signatures) * len(keys) <= INLINE_VERIFICATIONS:
            return signatures.verify_all(f.signatures, f.digest, keys)
        return await asyncio.to_thread(signatures.verify_all, f.signatures, f.digest, keys)

    def wait_us(self, p: CompiledPolicy) -> int:
        return p.record.signature_wait_us or self.default_wait_us

    def amend(
        self, result: policy_pb2.PolicyResult, p: CompiledPolicy, facts: Facts,
        verified: Sequence[common_pb2.SignatureFact],
    ) -> None:
        """Add the signature reason and the wait to a not-matched result of `p`."""
        if result.matched or result.blocked or not reads_signatures(p):
            return
        wanted = rule_keys(p.rule)
        have = set(signatures.verified_names(verified))
        if (have & wanted) if wanted else have:
            return  # a signature satisfied it: the rule failed for another reason
        why = signatures.summary(verified, wanted)
        result.reason = f"{result.reason}; {why}" if result.reason else why
        wait = self.wait_us(p)
        if verified or wait <= 0 or not _signature_would_help(p, facts, wanted):
            return
        d = duration_pb2.Duration()
        d.FromMicroseconds(wait)
        result.wait_for_signature.CopyFrom(d)


def _signature_would_help(p: CompiledPolicy, facts: Facts, wanted: frozenset[str]) -> bool:
    """Whether the rule matches these facts with a signature verified by every key it names
    (or, for `signed`, by some key): else no arrival can change the outcome."""
    names = sorted(wanted) or ["trusted-key"]
    sig = SignatureFact(manifest_digest="sha256:pending", verified_by=tuple(names))
    try:
        return bool(p.rule.evaluate(dataclasses.replace(facts, signatures=(sig,))))
    except Exception:  # when unsure, wait: the wait ends in a decision anyway
        return True
