"""The rule AST: a small typed tree built from the Lark parse tree, then compiled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Span:
    """Where a piece of source text is: 1-based line/column, and its text."""

    line: int
    column: int
    text: str


@dataclass(frozen=True)
class Literal:
    """A literal operand. ``kind`` is "string", "number" or "list" (of Literal items)."""

    kind: str
    value: object
    span: Span


@dataclass(frozen=True)
class Comparison:
    """``field[key] operator operand``; ``span.text`` is the whole clause's source."""

    field: str
    key: str | None
    field_span: Span
    operator: str
    operator_span: Span
    operand: Literal
    span: Span


@dataclass(frozen=True)
class Signed:
    """``signed`` (``key`` None: any trusted key) or ``signed_by "KEY"``."""

    key: str | None
    span: Span
    key_span: Span | None = None


@dataclass(frozen=True)
class Const:
    value: bool
    span: Span


@dataclass(frozen=True)
class Not:
    operand: Node
    span: Span


@dataclass(frozen=True)
class And:
    operands: tuple[Node, ...]
    span: Span


@dataclass(frozen=True)
class Or:
    operands: tuple[Node, ...]
    span: Span


Node = Union[Comparison, Signed, Const, Not, And, Or]  # noqa: UP007 - a runtime alias


def children(node: Node) -> tuple[Node, ...]:
    """Direct sub-expressions of ``node``."""
    if isinstance(node, (And, Or)):
        return node.operands
    if isinstance(node, Not):
        return (node.operand,)
    return ()


def post_order(root: Node) -> list[Node]:
    """Every node, children before parents, left to right; iterative so depth never matters."""
    out: list[Node] = []
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            out.append(node)
            continue
        stack.append((node, True))
        stack.extend((child, False) for child in reversed(children(node)))
    return out
