"""Parsing: size and depth limits, the Lark LALR parser, syntax errors in human words, and the
conversion of the parse tree into the rule AST (``nodes``)."""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable, Iterator
from importlib import resources

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lexer import BasicLexer, LexerThread

from policy_service.rules.errors import RuleCompileError, RuleErrorInfo, position
from policy_service.rules.nodes import (
    And,
    Comparison,
    Const,
    Literal,
    Node,
    Not,
    Or,
    Signed,
    Span,
)

MAX_RULE_BYTES = 8 * 1024
MAX_DEPTH = 64
# Keeps int() far from Python's 4300-digit conversion limit and values inside int64.
MAX_NUMBER = 2**63 - 1

# Terminal name -> how an error message names it. Order is the order expected tokens are listed.
TERMINAL_WORDS: dict[str, str] = {
    "NAME": "a field name",
    "STRING": "a string",
    "NUMBER": "a number",
    "_LSQB": "'['",
    "NOT": "'not'",
    "TRUE": "'true'",
    "FALSE": "'false'",
    "SIGNED": "'signed'",
    "SIGNED_BY": "'signed_by'",
    "_LPAR": "'('",
    "EQ": "'=='",
    "NE": "'!='",
    "LT": "'<'",
    "LE": "'<='",
    "GT": "'>'",
    "GE": "'>='",
    "STARTSWITH": "'startswith'",
    "ENDSWITH": "'endswith'",
    "CONTAINS": "'contains'",
    "MATCHES": "'matches'",
    "SEMVER": "'semver'",
    "IN": "'in'",
    "_AND": "'and'",
    "_OR": "'or'",
    "_RSQB": "']'",
    "_COMMA": "','",
    "_RPAR": "')'",
    "$END": "end of rule",
    "COMMENT": "a comment",
    "WS": "white space",
}
_ORDER = {name: i for i, name in enumerate(TERMINAL_WORDS)}

# Characters people type from other languages, and what this one spells instead.
_CHARACTER_HINTS = {"=": "==", "&": "and", "|": "or", "!": "not", "'": '"'}

SIZE_SUFFIXES = {"": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}

_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}


@functools.cache
def parser() -> Lark:
    """The LALR parser, built once per process."""
    grammar = resources.files("policy_service.rules").joinpath("grammar.lark").read_text("utf-8")
    # The basic lexer, not the contextual one: a keyword is always a keyword, even where it
    # cannot stand ("a and or b" must complain about "or", not about a field named "or").
    return Lark(grammar, parser="lalr", lexer="basic", propagate_positions=True,
                maybe_placeholders=False)


@functools.cache
def _lexer() -> BasicLexer:
    # Lark.lex() builds a new lexer (and recompiles its regexes) on every call; build it once.
    return BasicLexer(parser().lexer_conf)


def tokens(text: str) -> Iterator[Token]:
    """The tokens of ``text`` (comments and white space dropped); raises UnexpectedCharacters."""
    return LexerThread.from_text(_lexer(), text).lex(None)


def terminal_words(names: Iterable[str]) -> tuple[str, ...]:
    """Human words for a set of Lark terminal names, in a stable order, without internals."""
    names = set(names)
    words: list[str] = []
    # After a field, 'not' can only start the operator 'not in'.
    operator_position = "IN" in names and "NAME" not in names
    for name in sorted(names, key=lambda n: (_ORDER.get(n, len(_ORDER)), n)):
        word = TERMINAL_WORDS.get(name) or _pattern_word(name)
        if name == "NOT" and operator_position:
            word = "'not in'"
        if word not in words:
            words.append(word)
    return tuple(words)


def _pattern_word(name: str) -> str:
    # A terminal missing from TERMINAL_WORDS (a test keeps this from happening): name it by its
    # literal text, never by Lark's internal name.
    for term in parser().terminals:
        if term.name == name and term.pattern.type == "str":
            return repr(term.pattern.value)
    return "a token"


def _snippet(text: str, index: int, width: int = 20) -> str:
    return text[index : index + width].split("\n", 1)[0]


def check_limits(text: str, max_bytes: int = MAX_RULE_BYTES, max_depth: int = MAX_DEPTH) -> None:
    """Refuse rules too long or nested too deeply, before anything recursive sees them."""
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        index = len(text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore"))
        line, column = position(text, index)
        raise RuleCompileError([RuleErrorInfo(
            line, column,
            f"rule is too long: {size} bytes, the limit is {max_bytes} bytes",
            offending_text=_snippet(text, index),
        )])
    # Depth <= number of '(' tokens + number of 'not' tokens, and the substring counts bound
    # those from above: most rules skip the token scan.
    if text.count("(") + text.count("not") > max_depth:
        _check_depth(text, max_depth)


def _check_depth(text: str, max_depth: int) -> None:
    # Depth = enclosing parentheses + enclosing 'not's, counted on the token stream so that a
    # pathological rule is refused in linear time. pending[i] counts the 'not's waiting for
    # their operand at parenthesis level i; and/or/an atom/a closing parenthesis settles them.
    pending = [0]
    depth = 0
    previous = ""
    try:
        for token in tokens(text):
            kind = token.type
            if kind == "NOT" and previous not in ("NAME", "_RSQB"):  # else it is 'not in'
                pending[-1] += 1
                depth += 1
            elif kind == "_LPAR":
                pending.append(0)
                depth += 1
            elif kind == "_RPAR" and len(pending) > 1:
                depth -= pending.pop() + 1
                depth -= pending[-1]
                pending[-1] = 0
            elif kind in ("_AND", "_OR", "NAME", "TRUE", "FALSE", "SIGNED", "SIGNED_BY"):
                depth -= pending[-1]
                pending[-1] = 0
            if depth > max_depth:
                raise RuleCompileError([RuleErrorInfo(
                    token.line or 1, token.column or 1,
                    f"rule is nested too deeply: more than {max_depth} levels of parentheses"
                    " and 'not'",
                    offending_text=str(token),
                )])
            previous = kind
    except UnexpectedInput:
        pass  # the parser reports the same error, with a better message


def parse(text: str) -> Tree:
    """Parse ``text`` (already within limits) or raise RuleCompileError for its first syntax
    error."""
    try:
        return parser().parse(text)
    except UnexpectedCharacters as exc:
        raise RuleCompileError([_character_error(text, exc)]) from None
    except UnexpectedToken as exc:
        raise RuleCompileError([_token_error(text, exc)]) from None
    except UnexpectedEOF as exc:
        line, column = _end_position(text)
        raise RuleCompileError([RuleErrorInfo(
            line, column, "unexpected end of rule", expected=terminal_words(exc.expected),
        )]) from None


def _end_position(text: str) -> tuple[int, int]:
    return position(text, len(text.rstrip()))


def _character_error(text: str, exc: UnexpectedCharacters) -> RuleErrorInfo:
    pos: int = exc.pos_in_stream or 0
    char = text[pos] if pos < len(text) else ""
    expected = terminal_words(exc.allowed or ())
    if char == '"':
        return RuleErrorInfo(
            exc.line, exc.column,
            'unterminated string: a string must end with " on the same line',
            offending_text=_snippet(text, pos), expected=('\'"\'',),
        )
    hint = _CHARACTER_HINTS.get(char, "")
    if char == "=" and text.startswith("==", exc.pos_in_stream):
        hint = ""
    message = f"unexpected character {char!r}"
    if expected:
        message += f"; expected {_or_list(expected)}"
    if hint:
        message += f"; did you mean {hint!r}?"
    return RuleErrorInfo(exc.line, exc.column, message, offending_text=char, expected=expected,
                         suggestion=hint)


def _token_error(text: str, exc: UnexpectedToken) -> RuleErrorInfo:
    token = exc.token
    # `accepts` tries each terminal on a copy of the parser: exact, unlike the LALR state's
    # `expected`, which may list tokens of merged states (a ')' outside any parenthesis).
    expected_names = set(exc.accepts or exc.expected)
    expected = terminal_words(expected_names)
    if token.type == "$END":
        line, column = _end_position(text)
        message = "empty rule" if not text.strip() else "unexpected end of rule"
        if expected:
            message += f"; expected {_or_list(expected)}"
        return RuleErrorInfo(line, column, message, expected=expected)
    if token.type in ("NAME", "STRING", "NUMBER"):
        what = {"NAME": "word", "STRING": "string", "NUMBER": "number"}[token.type]
        message = f"unexpected {what} {str(token)!r}"
    else:
        message = f"unexpected {TERMINAL_WORDS.get(token.type, 'token')}"
    if expected:
        message += f"; expected {_or_list(expected)}"
    suggestion = ""
    if token.type == "STRING" and (key_word := _misspelt_signed_by(text, token)):
        # `signd_by "ci"` lexes as a field name and a string: name the keyword it resembles.
        suggestion = "signed_by"
        message = (f"unexpected word {key_word.text!r} before a string; did you mean "
                   f"{suggestion!r}?")
        return RuleErrorInfo(key_word.line, key_word.column, message,
                             offending_text=key_word.text, expected=("'signed_by'",),
                             suggestion=suggestion)
    if token.type == "NAME":
        # A misspelt keyword ('endwith', 'adn') lexes as a name; offer the nearest keyword.
        keywords = [w[1:-1] for w in expected if w.startswith("'") and w[1:-1].isalpha()]
        close = difflib.get_close_matches(str(token), keywords, n=1, cutoff=0.6)
        if close:
            suggestion = close[0]
            message += f"; did you mean {suggestion!r}?"
    return RuleErrorInfo(token.line or 1, token.column or 1, message,
                         offending_text=str(token), expected=expected, suggestion=suggestion)


_LAST_WORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)[ \t\r\n]*\Z")


def _misspelt_signed_by(text: str, token: Token) -> Span | None:
    """The word before a misplaced string when it looks like 'signed_by' (and is no field)."""
    m = _LAST_WORD.search(text, 0, token.start_pos or 0)
    if m is None or m.group(1) == "semver" or not difflib.get_close_matches(
            m.group(1), ["signed_by"], n=1, cutoff=0.75):
        return None
    line, column = position(text, m.start(1))
    return Span(line, column, m.group(1))


def _or_list(words: tuple[str, ...]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


# ---------------------------------------------------------------------------------------------
# Parse tree -> AST. Iterative (explicit stack), so its cost never depends on Python's stack.

def to_ast(text: str, tree: Tree) -> tuple[Node, list[RuleErrorInfo]]:
    """Build the AST; literal errors (bad escapes, numbers too large) are collected, not raised."""
    errors: list[RuleErrorInfo] = []
    built: dict[int, Node] = {}
    stack: list[tuple[Tree, bool]] = [(tree, False)]
    while stack:
        node, expanded = stack.pop()
        if node.data == "comparison":
            built[id(node)] = _comparison(text, node, errors)
            continue
        if node.data in ("signed", "signed_by"):
            built[id(node)] = _signed(text, node, errors)
            continue
        if not expanded:
            stack.append((node, True))
            stack.extend((c, False) for c in node.children if isinstance(c, Tree))
            continue
        span = _tree_span(text, node)
        subs = tuple(built.pop(id(c)) for c in node.children if isinstance(c, Tree))
        if node.data == "or_expr":
            built[id(node)] = Or(subs, span)
        elif node.data == "and_expr":
            built[id(node)] = And(subs, span)
        elif node.data == "negation":
            built[id(node)] = Not(subs[0], span)
        elif node.data in ("true", "false"):
            built[id(node)] = Const(node.data == "true", span)
        else:  # pragma: no cover - the grammar has no other rule at expression level
            raise AssertionError(f"unexpected parse node {node.data}")
    return built[id(tree)], errors


def _tree_span(text: str, tree: Tree) -> Span:
    meta = tree.meta
    return Span(meta.line, meta.column, text[meta.start_pos : meta.end_pos])


def _token_span(token: Token) -> Span:
    return Span(token.line or 1, token.column or 1, str(token))


def _comparison(text: str, tree: Tree, errors: list[RuleErrorInfo]) -> Comparison:
    field_tree, operator_tree, value = tree.children
    assert isinstance(field_tree, Tree) and isinstance(operator_tree, Tree)
    name_token = field_tree.children[0]
    assert isinstance(name_token, Token)
    key: str | None = None
    if len(field_tree.children) > 1:
        key_token = field_tree.children[1]
        assert isinstance(key_token, Token)
        key = decode_string(key_token, errors)
    if operator_tree.data == "not_in":
        operator = "not in"
        operator_span = _tree_span(text, operator_tree)
    else:
        op_token = operator_tree.children[0]
        assert isinstance(op_token, Token)
        operator = str(op_token)
        operator_span = _token_span(op_token)
    return Comparison(
        field=str(name_token),
        key=key,
        field_span=_tree_span(text, field_tree),
        operator=operator,
        operator_span=operator_span,
        operand=_literal(text, value, errors),
        span=_tree_span(text, tree),
    )


def _signed(text: str, tree: Tree, errors: list[RuleErrorInfo]) -> Signed:
    span = _tree_span(text, tree)
    if tree.data == "signed":
        return Signed(None, span)
    key_token = tree.children[-1]
    assert isinstance(key_token, Token)
    return Signed(decode_string(key_token, errors), span, _token_span(key_token))


def _literal(text: str, value: Tree | Token, errors: list[RuleErrorInfo]) -> Literal:
    if isinstance(value, Tree):  # a list
        items = tuple(_literal(text, item, errors) for item in value.children)
        return Literal("list", items, _tree_span(text, value))
    if value.type == "STRING":
        return Literal("string", decode_string(value, errors), _token_span(value))
    return Literal("number", decode_number(value, errors), _token_span(value))


def decode_string(token: Token, errors: list[RuleErrorInfo]) -> str:
    """Decode a STRING token's escapes (\\" \\\\ \\n \\t \\uXXXX); report bad ones."""
    raw = str(token)[1:-1]
    out: list[str] = []
    i = 0
    while i < len(raw):
        char = raw[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        escape = raw[i + 1] if i + 1 < len(raw) else ""
        column = (token.column or 1) + 1 + i
        if escape in _ESCAPES:
            out.append(_ESCAPES[escape])
            i += 2
            continue
        if escape == "u":
            digits = raw[i + 2 : i + 6]
            if len(digits) == 4 and all(d in "0123456789abcdefABCDEF" for d in digits):
                code = int(digits, 16)
                if 0xD800 <= code <= 0xDFFF:
                    errors.append(RuleErrorInfo(
                        token.line or 1, column,
                        f"\\u{digits} is a surrogate, not a character",
                        offending_text=raw[i : i + 6], expected=("a non-surrogate code point",),
                    ))
                else:
                    out.append(chr(code))
                i += 6
                continue
            errors.append(RuleErrorInfo(
                token.line or 1, column, "\\u must be followed by four hexadecimal digits",
                offending_text=raw[i : i + 6], expected=("four hexadecimal digits",),
            ))
            i += 2
            continue
        errors.append(RuleErrorInfo(
            token.line or 1, column, f"unknown escape '\\{escape}' in string",
            offending_text=raw[i : i + 2],
            expected=("'\\\"'", "'\\\\'", "'\\n'", "'\\t'", "'\\uXXXX'"),
        ))
        i += 2
    return "".join(out)


def decode_number(token: Token, errors: list[RuleErrorInfo]) -> int:
    """The value of a NUMBER token, size suffix applied; numbers past int64 are errors."""
    raw = str(token)
    digits = raw.rstrip("KMGTiB")
    suffix = raw[len(digits):]
    value = int(digits) * SIZE_SUFFIXES[suffix] if len(digits) <= 19 else MAX_NUMBER + 1
    if value > MAX_NUMBER:
        errors.append(RuleErrorInfo(
            token.line or 1, token.column or 1, f"number too large (the limit is {MAX_NUMBER})",
            offending_text=raw[:40], expected=("a number up to 9223372036854775807",),
        ))
        return 0
    return value
