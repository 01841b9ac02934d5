"""The policy rule language: one boolean expression over image facts, compiled once.

See docs/rule-language.md for the language and docs/INTERFACES.md for the contract.
"""

from policy_service.rules.compiler import ClauseOutcome, CompiledRule, Explanation, compile_rule
from policy_service.rules.errors import RuleCompileError, RuleErrorInfo
from policy_service.rules.facts import ComponentFact, FactKind, Facts, SignatureFact, VulnCounts
from policy_service.rules.fields import FIELDS, FieldType
from policy_service.rules.syntax import MAX_DEPTH, MAX_RULE_BYTES

__all__ = [
    "FIELDS",
    "MAX_DEPTH",
    "MAX_RULE_BYTES",
    "ClauseOutcome",
    "CompiledRule",
    "ComponentFact",
    "Explanation",
    "FactKind",
    "Facts",
    "FieldType",
    "RuleCompileError",
    "RuleErrorInfo",
    "SignatureFact",
    "VulnCounts",
    "compile_rule",
]
