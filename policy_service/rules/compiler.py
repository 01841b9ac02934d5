"""Type checking and compilation of a rule into closures, and the compiled rule itself."""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from policy_service.rules import syntax
from policy_service.rules.errors import RuleCompileError, RuleErrorInfo
from policy_service.rules.facts import FactKind, Facts
from policy_service.rules.fields import (
    FIELDS,
    LIST_OPERATORS,
    FieldSpec,
    FieldType,
    operators_for,
)
from policy_service.rules.nodes import (
    And,
    Comparison,
    Const,
    Node,
    Not,
    Or,
    Signed,
    Span,
    post_order,
)
from policy_service.rules.regex import (
    MAX_REGEXES,
    RegexBudget,
    RegexError,
    RegexTooLarge,
    compile_search,
)
from policy_service.rules.signed import describe, signed_test
from policy_service.rules.versions import RangeError, VersionRange, parse_range, release_of

Predicate = Callable[[Any], bool]
Leaf = Comparison | Signed

_FIELD_CHOICES = tuple('label["KEY"]' if name == "label" else name for name in FIELDS)


@dataclass(frozen=True)
class ClauseOutcome:
    """How one comparison evaluated: its source text, the value seen (rendered), its result."""

    clause: str
    value: str
    result: bool
    line: int
    column: int


@dataclass(frozen=True)
class Explanation:
    result: bool
    clauses: list[ClauseOutcome]


@dataclass(frozen=True)
class _Clause:
    span: Span
    read: Callable[[Facts], Any]
    render: Callable[[Any], str]
    test: Predicate


class CompiledRule:
    """A rule compiled once; ``evaluate(facts)`` short-circuits, ``explain(facts)`` reports every
    clause (comparisons, ``signed``, ``signed_by``). ``signed_by_keys`` holds the key names the
    rule's ``signed_by`` clauses name, so a policy naming an unknown key can be refused."""

    __slots__ = ("_clauses", "_combine", "evaluate", "fields", "required_facts",
                 "signed_by_keys", "source")

    def __init__(self, source: str, evaluate: Callable[[Facts], bool], clauses: list[_Clause],
                 combine: Callable[[list[bool]], bool], fields: frozenset[str],
                 required_facts: frozenset[FactKind],
                 signed_by_keys: frozenset[str] = frozenset()) -> None:
        self.source = source
        # An instance attribute, not a method: one call less per evaluation.
        self.evaluate: Callable[[Facts], bool] = evaluate
        self._clauses = clauses
        self._combine = combine
        self.fields = fields
        self.required_facts = required_facts
        self.signed_by_keys = signed_by_keys

    def explain(self, facts: Facts) -> Explanation:
        """Evaluate every clause (no short-circuit) and say what each saw."""
        outcomes = []
        results = []
        for clause in self._clauses:
            held = clause.test(facts)
            results.append(held)
            outcomes.append(ClauseOutcome(clause.span.text, clause.render(clause.read(facts)), held,
                                          clause.span.line, clause.span.column))
        return Explanation(self._combine(results), outcomes)

    def __repr__(self) -> str:
        return f"CompiledRule({self.source!r})"


def compile_rule(text: str, *, max_bytes: int = syntax.MAX_RULE_BYTES,
                 max_depth: int = syntax.MAX_DEPTH) -> CompiledRule:
    """Parse, type-check and compile ``text``; raise RuleCompileError listing what is wrong."""
    if not isinstance(text, str):
        raise TypeError(f"a rule is a str, not {type(text).__name__}")
    syntax.check_limits(text, max_bytes, max_depth)
    tree = syntax.parse(text)
    root, errors = syntax.to_ast(text, tree)
    nodes = post_order(root)
    leaves: list[Leaf] = [n for n in nodes if isinstance(n, (Comparison, Signed))]
    comparisons = [n for n in leaves if isinstance(n, Comparison)]
    budget = _regex_budget(comparisons, errors)
    tests: dict[int, Predicate] = {}
    for leaf in leaves:
        test = (_check_signed(leaf, errors) if isinstance(leaf, Signed)
                else _check_and_build(leaf, errors, budget))
        if test is not None:
            tests[id(leaf)] = test
    if errors:
        errors.sort(key=lambda e: (e.line, e.column))
        raise RuleCompileError(errors)

    clauses: list[_Clause] = []
    index_of: dict[int, int] = {}
    for leaf in leaves:
        index_of[id(leaf)] = len(clauses)
        clauses.append(_clause(leaf, tests[id(leaf)]))

    def facts_leaf(node: Leaf) -> Predicate:
        return tests[id(node)]

    def result_leaf(node: Leaf) -> Predicate:
        i = index_of[id(node)]
        return lambda results: results[i]

    used = {c.field for c in comparisons}
    required = {FIELDS[name].fact for name in used}
    signed = [n for n in leaves if isinstance(n, Signed)]
    if signed:
        used.update("signed" if n.key is None else "signed_by" for n in signed)
        required.add(FactKind.SIGNATURES)
    return CompiledRule(
        source=text,
        evaluate=_assemble(nodes, facts_leaf),
        clauses=clauses,
        combine=_assemble(nodes, result_leaf),
        fields=frozenset(used),
        required_facts=frozenset(required),
        signed_by_keys=frozenset(n.key for n in signed if n.key is not None),
    )


def _clause(leaf: Leaf, test: Predicate) -> _Clause:
    """What explain() reads, renders and tests for one leaf."""
    if isinstance(leaf, Signed):
        key = leaf.key
        return _Clause(leaf.span, _read_signatures, lambda sigs: describe(sigs, key), test)
    spec = FIELDS[leaf.field]
    render = _render_version if leaf.operator == "semver" else _renderer(spec.type)
    return _Clause(leaf.span, _reader(spec, leaf.key), render, test)


def _read_signatures(facts: Facts) -> Any:
    return facts.signatures


def _render_version(value: str) -> str:
    """A string and how `semver` read it: `"v1.25.3-alpine" (1.25.3)`."""
    release = release_of(value)
    read = "not a version" if release is None else ".".join(map(str, release))
    return f"{json.dumps(value, ensure_ascii=False)} ({read})"


def _regex_budget(comparisons: list[Comparison],
                  errors: list[RuleErrorInfo]) -> RegexBudget | None:
    """The program-size budget for this rule's regexes; None (and an error at the first one
    too many) when the rule holds more than MAX_REGEXES of them, so none is compiled."""
    regexes = [c for c in comparisons if c.operator == "matches"]
    if len(regexes) <= MAX_REGEXES:
        return RegexBudget()
    errors.append(_error(regexes[MAX_REGEXES].operand.span,
                         f"too many regular expressions: {len(regexes):,} > {MAX_REGEXES} "
                         "'matches' comparisons in one rule", ("fewer 'matches'",)))
    return None


# ---------------------------------------------------------------------------------------------
# Type checking

def _check_and_build(node: Comparison, errors: list[RuleErrorInfo],
                     budget: RegexBudget | None = None) -> Predicate | None:
    """Type-check one comparison; on success return its test on the field's value."""
    spec = FIELDS.get(node.field)
    if spec is None:
        close = difflib.get_close_matches(node.field, list(FIELDS), n=1, cutoff=0.6)
        suggestion = close[0] if close else ""
        message = f"unknown field {node.field!r}"
        if suggestion:
            message += f"; did you mean {suggestion!r}?"
        else:
            message += f"; expected one of {', '.join(_FIELD_CHOICES)}"
        errors.append(_error(node.field_span, message, _FIELD_CHOICES, suggestion,
                             offending=node.field))
        return None
    count = len(errors)
    if spec.keyed and node.key is None:
        errors.append(_error(node.field_span, f'{spec.name} needs a key, e.g. {spec.name}["KEY"]',
                             (f'{spec.name}["KEY"]',)))
    elif not spec.keyed and node.key is not None:
        errors.append(_error(node.field_span, f"field {spec.name!r} takes no key",
                             (spec.name,)))
    allowed = operators_for(spec.type)
    if node.operator not in allowed:
        errors.append(_error(
            node.operator_span,
            f"operator {node.operator!r} does not apply to {spec.name!r}, a {spec.type.value}; "
            f"expected one of {', '.join(allowed)}",
            tuple(f"'{op}'" for op in allowed),
        ))
        return None
    operand = node.operand
    if node.operator in LIST_OPERATORS:
        if operand.kind != "list":
            errors.append(_error(operand.span, f"{node.operator!r} needs a list of strings, "
                                 f"e.g. [\"a\", \"b\"]; got a {operand.kind}",
                                 ("a list of strings",)))
        else:
            for item in operand.value:  # type: ignore[attr-defined]
                if item.kind != "string":
                    errors.append(_error(item.span, f"the list after {node.operator!r} holds "
                                         f"strings; got a {item.kind}", ("a string",)))
    elif spec.type is FieldType.NUMBER:
        if operand.kind != "number":
            errors.append(_error(operand.span, f"{spec.name!r} is a number; expected a number, "
                                 f"got a {operand.kind}", ("a number",)))
        elif spec.name != "size" and not operand.span.text.isdigit():
            errors.append(_error(operand.span, "size suffixes (KiB, MiB, GiB, TiB) apply only "
                                 f"to 'size', not {spec.name!r}", ("a number",)))
    elif operand.kind != "string":
        errors.append(_error(operand.span, f"{spec.name!r} is a {spec.type.value}; "
                             f"{node.operator!r} expects a string, got a {operand.kind}",
                             ("a string",)))
    if len(errors) > count:
        return None
    return _build_test(spec, node, errors, budget)


def _check_signed(node: Signed, errors: list[RuleErrorInfo]) -> Predicate | None:
    span = node.key_span or node.span
    # A key that decodes to nothing after a bad escape already has its error.
    if node.key is not None and not node.key.strip() and "\\" not in span.text:
        errors.append(_error(span, "signed_by needs the name of a trusted key, e.g. "
                             'signed_by "ci"', ("a key name",)))
        return None
    return signed_test(node.key)


def _semver_range(node: Comparison, errors: list[RuleErrorInfo]) -> VersionRange | None:
    """The operand of `semver` parsed, or None and an error at the offending character."""
    text = node.operand.value
    assert isinstance(text, str)
    try:
        return parse_range(text)
    except RangeError as exc:
        span = node.operand.span
        column, offending = span.column, span.text
        # Without escapes, columns inside the string are exact; else point at the string.
        if exc.offset is not None and span.text[1:-1] == text:
            column = span.column + 1 + exc.offset
            offending = text[exc.offset : exc.offset + exc.length]
        errors.append(RuleErrorInfo(
            span.line, column, f"invalid version range: {exc}", offending_text=offending,
            expected=('a range such as ">=1.25 <2"',),
        ))
        return None


def _error(span: Span, message: str, expected: tuple[str, ...] = (), suggestion: str = "",
           offending: str | None = None) -> RuleErrorInfo:
    return RuleErrorInfo(span.line, span.column, message,
                         offending_text=span.text if offending is None else offending,
                         expected=expected, suggestion=suggestion)


# ---------------------------------------------------------------------------------------------
# Closures

def _reader(spec: FieldSpec, key: str | None) -> Callable[[Facts], Any]:
    if spec.keyed:
        label = key or ""
        return lambda facts: facts.labels.get(label, "")
    return spec.get


def _build_test(spec: FieldSpec, node: Comparison, errors: list[RuleErrorInfo],
                budget: RegexBudget | None) -> Predicate | None:
    op = node.operator
    value: Any = node.operand.value
    if op in LIST_OPERATORS:
        value = frozenset(item.value for item in value)
    if op == "semver":
        value = _semver_range(node, errors)
        if value is None:
            return None
    if op == "matches":
        if budget is None or budget.exhausted:
            return None  # the rule already failed on its regexes: compile no more of them
        try:
            value = compile_search(value, budget)
        except RegexTooLarge as exc:
            errors.append(_error(node.operand.span, str(exc),
                                 ("a smaller RE2 regular expression",)))
            return None
        except RegexError as exc:
            errors.append(_error(node.operand.span, f"invalid regular expression: {exc}",
                                 ("an RE2 regular expression",)))
            return None
    if spec.type is FieldType.STRING_SET:
        assert spec.get_set is not None
        return _set_test(op, value, spec.get, spec.get_set)
    return _scalar_test(op, value, _reader(spec, node.key))


def _scalar_test(op: str, v: Any, g: Callable[[Facts], Any]) -> Predicate:
    # One closure per operator with getter and operand bound: no dispatch at evaluation time.
    tests: dict[str, Predicate] = {
        "==": lambda f: g(f) == v,
        "!=": lambda f: g(f) != v,
        "<": lambda f: g(f) < v,
        "<=": lambda f: g(f) <= v,
        ">": lambda f: g(f) > v,
        ">=": lambda f: g(f) >= v,
        "startswith": lambda f: g(f).startswith(v),
        "endswith": lambda f: g(f).endswith(v),
        "contains": lambda f: v in g(f),
        "in": lambda f: g(f) in v,
        "not in": lambda f: g(f) not in v,
        "matches": lambda f: v(g(f)),
        "semver": lambda f: v(g(f)),
    }
    return tests[op]


def _set_test(op: str, v: Any, g: Callable[[Facts], tuple[str, ...]],
              gs: Callable[[Facts], frozenset[str]]) -> Predicate:
    # Positive operators hold when ANY element satisfies them; '!=' and 'not in' when NO
    # element is equal / in the list. Membership uses the field's frozenset, the rest iterates.
    if op == "==":
        return lambda f: v in gs(f)
    if op == "!=":
        return lambda f: v not in gs(f)
    if op == "in":
        return lambda f: not v.isdisjoint(gs(f))
    if op == "not in":
        return lambda f: v.isdisjoint(gs(f))
    if op == "startswith":
        return lambda f: any(x.startswith(v) for x in g(f))
    if op == "endswith":
        return lambda f: any(x.endswith(v) for x in g(f))
    if op == "contains":
        return lambda f: any(v in x for x in g(f))
    if op == "matches":
        return lambda f: any(v(x) for x in g(f))
    raise AssertionError(f"operator {op!r} on a set")  # pragma: no cover - type-checked


# An explanation shows this much of a value: enough to see why a clause held, while facts of
# 150,000 components explained over a few clauses would otherwise make a response of tens of
# MB (built and sent by the server, refused by a client's 4 MiB limit).
MAX_RENDERED_VALUES = 100
MAX_RENDERED_CHARS = 1024


def _clipped(text: str) -> str:
    """A string value cut to MAX_RENDERED_CHARS, saying how much was left out."""
    if len(text) <= MAX_RENDERED_CHARS:
        return text
    return f"{text[:MAX_RENDERED_CHARS]}... ({len(text) - MAX_RENDERED_CHARS} more characters)"


def _render_set(values: Any) -> str:
    """The first MAX_RENDERED_VALUES values as a JSON list, then how many more there were."""
    listed = list(values) if len(values) <= MAX_RENDERED_VALUES else [
        v for _, v in zip(range(MAX_RENDERED_VALUES), values, strict=False)
    ]
    text = json.dumps([_clipped(v) for v in listed], ensure_ascii=False, separators=(",", ":"))
    more = len(values) - len(listed)
    return f"{text} (+{more} more)" if more else text


def _renderer(type_: FieldType) -> Callable[[Any], str]:
    if type_ is FieldType.NUMBER:
        return str
    if type_ is FieldType.STRING_SET:
        return _render_set
    return lambda value: json.dumps(
        _clipped(value) if isinstance(value, str) else value, ensure_ascii=False
    )


def _assemble(nodes: Sequence[Node], leaf: Callable[[Leaf], Predicate]) -> Predicate:
    """Combine leaves into one short-circuiting closure; ``nodes`` is in post-order, so this
    loop is iterative whatever the nesting."""
    built: dict[int, Predicate] = {}
    for node in nodes:
        if isinstance(node, (Comparison, Signed)):
            built[id(node)] = leaf(node)
        elif isinstance(node, Const):
            built[id(node)] = (lambda _: True) if node.value else (lambda _: False)
        elif isinstance(node, Not):
            built[id(node)] = _negate(built.pop(id(node.operand)))
        elif isinstance(node, And):
            built[id(node)] = _all([built.pop(id(c)) for c in node.operands])
        elif isinstance(node, Or):
            built[id(node)] = _any([built.pop(id(c)) for c in node.operands])
    return built[id(nodes[-1])]


def _negate(inner: Predicate) -> Predicate:
    return lambda x: not inner(x)


def _all(parts: list[Predicate]) -> Predicate:
    if len(parts) == 2:
        a, b = parts
        return lambda x: a(x) and b(x)
    if len(parts) == 3:
        a, b, c = parts
        return lambda x: a(x) and b(x) and c(x)

    def run(x: Any) -> bool:
        for part in parts:  # noqa: SIM110 - a plain loop beats all(<generator>)
            if not part(x):
                return False
        return True
    return run


def _any(parts: list[Predicate]) -> Predicate:
    if len(parts) == 2:
        a, b = parts
        return lambda x: a(x) or b(x)
    if len(parts) == 3:
        a, b, c = parts
        return lambda x: a(x) or b(x) or c(x)

    def run(x: Any) -> bool:
        for part in parts:  # noqa: SIM110 - a plain loop beats any(<generator>)
            if part(x):
                return True
        return False
    return run
