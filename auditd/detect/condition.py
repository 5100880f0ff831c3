"""The condition language of rules: a tokenizer and a recursive-descent parser.

Conditions are operators' text, so they are parsed by hand into a small tree and
never handed to ``eval``. Grammar (lowest precedence first)::

    expr      := and_expr ('or' and_expr)*
    and_expr  := not_expr ('and' not_expr)*
    not_expr  := 'not' not_expr | primary
    primary   := '(' expr ')' | 'true' | 'false' | MACRO | FIELD test
    test      := ('=' | '!=' | '<' | '<=' | '>' | '>=') VALUE
               | ('contains' | 'icontains' | 'startswith' | 'endswith' | 'regex') VALUE
               | ('in' | 'intersects' | 'subset_of') ('(' VALUE (',' VALUE)* ')' | LIST)
               | 'cidr' ('(' VALUE (',' VALUE)* ')' | VALUE | LIST)
               | 'exists'

A VALUE is a bare word (``export``, ``10086``, ``10.0.0.0/8``) or a quoted string
('...' or "..."). A bare word after ``in`` names a list; inside parentheses every
word is a literal value. The tree says nothing about types: field names, lists and
macros are checked and resolved later (``resolve.py``), where the definitions are known.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from auditd.config.located import Doc, PathKey

COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")
VALUE_OPERATORS = ("contains", "icontains", "startswith", "endswith", "regex")
SET_OPERATORS = ("in", "intersects", "subset_of")
OPERATORS = COMPARISONS + VALUE_OPERATORS + SET_OPERATORS + ("cidr", "exists")
KEYWORDS = frozenset(("and", "or", "not", "true", "false") + OPERATORS)

# characters that end a bare word; '!' only as part of '!='
_DELIMITERS = frozenset(" \t\r\n(),=<>!'\"")


class ConditionError(Exception):
    """A problem in one condition text, at a character position within it."""

    def __init__(self, message: str, pos: int):
        super().__init__(message)
        self.message = message
        self.pos = pos


@dataclass(frozen=True, eq=False)
class Origin:
    """Where a piece of condition text came from, so errors can name file and key."""

    doc: Doc
    path: PathKey
    text: str


# --- the parsed tree ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Value:
    text: str
    quoted: bool
    pos: int


@dataclass(frozen=True, slots=True)
class ListName:
    name: str
    pos: int


@dataclass(frozen=True, slots=True)
class Compare:
    """FIELD OP VALUE as written; `value` is a Value, a tuple of Values, a ListName or None."""

    field: str
    op: str
    value: Any
    pos: int
    origin: Origin | None = dataclasses.field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class MacroRef:
    name: str
    pos: int
    origin: Origin | None = dataclasses.field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Any


@dataclass(frozen=True, slots=True)
class Const:
    value: bool


# --- tokens -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # word, string, op, '(', ')', ',', end
    text: str
    pos: int


def tokenize(text: str, offset: int = 0) -> list[Token]:
    """Split condition text into tokens; positions are indexes into `text`."""
    tokens: list[Token] = []
    i, n = offset, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "(),":
            tokens.append(Token(ch, ch, i))
            i += 1
        elif ch in "=<>!":
            two = text[i:i + 2]
            if two in ("<=", ">=", "!="):
                tokens.append(Token("op", two, i))
                i += 2
            elif ch == "!":
                raise ConditionError("'!' must be part of '!='; negate with 'not'", i)
            elif two == "==":
                raise ConditionError("equality is written '=', not '=='", i)
            else:
                tokens.append(Token("op", ch, i))
                i += 1
        elif ch in "'\"":
            start = i
            value, i = _read_string(text, i)
            tokens.append(Token("string", value, start))
        else:
            start = i
            while i < n and text[i] not in _DELIMITERS:
                i += 1
            tokens.append(Token("word", text[start:i], start))
    tokens.append(Token("end", "", n))
    return tokens


def _read_string(text: str, start: int) -> tuple[str, int]:
    r"""Read a quoted string; only \\ and the quote itself are escapes, so regexes
    such as '^\d+$' need no doubling."""
    quote = text[start]
    out: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in (quote, "\\"):
            out.append(text[i + 1])
            i += 2
        elif ch == quote:
            return "".join(out), i + 1
        else:
            out.append(ch)
            i += 1
    raise ConditionError("unterminated string", start)


# --- the parser ---------------------------------------------------------------------


def parse_condition(text: str, origin: Origin | None = None, *, offset: int = 0) -> Any:
    """Parse condition text (from `offset`) into a tree; raises ConditionError."""
    parser = _Parser(tokenize(text, offset), origin)
    node = parser.expr()
    parser.expect("end", "'and', 'or' or the end of the condition")
    return node


def parse_appended(text: str, origin: Origin | None = None) -> tuple[str, Any]:
    """Parse an appended condition, which must begin with 'and' or 'or'.

    Unlike Falco's textual concatenation, the result is later joined as
    ``(base) and|or (appended)``, so an appended ``or`` cannot bind into the base.
    """
    tokens = tokenize(text)
    first = tokens[0]
    if first.kind != "word" or first.text not in ("and", "or"):
        raise ConditionError("an appended condition must start with 'and' or 'or'", first.pos)
    return first.text, parse_condition(text, origin, offset=first.pos + len(first.text))


MAX_NESTING = 50  # parentheses and 'not' inside one another: beyond, a located error, not a RecursionError


class _Parser:
    def __init__(self, tokens: list[Token], origin: Origin | None):
        self.tokens = tokens
        self.at = 0
        self.origin = origin
        self.depth = 0

    def deeper(self, tok: Token) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise ConditionError(f"nested more than {MAX_NESTING} deep (parentheses or 'not'); "
                                 "simplify the condition or split it into macros", tok.pos)

    # token helpers
    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.at + ahead, len(self.tokens) - 1)]

    def take(self) -> Token:
        tok = self.tokens[self.at]
        self.at += 1
        return tok

    def is_word(self, *words: str) -> bool:
        tok = self.peek()
        return tok.kind == "word" and tok.text in words

    def expect(self, kind: str, what: str) -> Token:
        tok = self.peek()
        if tok.kind != kind:
            raise ConditionError(f"expected {what}, got {_describe(tok)}", tok.pos)
        return self.take()

    # grammar
    def expr(self) -> Any:
        items = [self.and_expr()]
        while self.is_word("or"):
            self.take()
            items.append(self.and_expr())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_expr(self) -> Any:
        items = [self.not_expr()]
        while self.is_word("and"):
            self.take()
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else And(tuple(items))

    def not_expr(self) -> Any:
        if self.is_word("not"):
            self.deeper(self.take())
            node = Not(self.not_expr())
            self.depth -= 1
            return node
        return self.primary()

    def primary(self) -> Any:
        tok = self.peek()
        if tok.kind == "(":
            self.deeper(self.take())
            node = self.expr()
            self.expect(")", "')'")
            self.depth -= 1
            return node
        if tok.kind != "word" or tok.text in ("and", "or") or tok.text in OPERATORS:
            raise ConditionError(f"expected a field, a macro or '(', got {_describe(tok)}", tok.pos)
        self.take()
        nxt = self.peek()
        is_test = nxt.kind == "op" or (nxt.kind == "word" and nxt.text in OPERATORS)
        if not is_test:
            if tok.text in ("true", "false"):
                return Const(tok.text == "true")
            return MacroRef(tok.text, tok.pos, self.origin)
        return self.test(tok)

    def test(self, field_tok: Token) -> Compare:
        op = self.take().text
        if op == "exists":
            value: Any = None
        elif op in SET_OPERATORS:
            value = self.value_set(op, allow_single=False)
        elif op == "cidr":
            value = self.value_set(op, allow_single=True)
        else:
            value = self.value(op)
        return Compare(field_tok.text, op, value, field_tok.pos, self.origin)

    def value(self, op: str) -> Value:
        tok = self.peek()
        if tok.kind == "string" or (tok.kind == "word" and tok.text not in KEYWORDS - {"true", "false"}):
            self.take()
            return Value(tok.text, tok.kind == "string", tok.pos)
        raise ConditionError(f"expected a value after '{op}', got {_describe(tok)}", tok.pos)

    def value_set(self, op: str, *, allow_single: bool) -> Any:
        tok = self.peek()
        if tok.kind == "(":
            self.take()
            values: list[Value] = []
            if self.peek().kind != ")":
                values.append(self.value(op))
                while self.peek().kind == ",":
                    self.take()
                    values.append(self.value(op))
            self.expect(")", "',' or ')'")
            return tuple(values)
        if tok.kind == "word" and tok.text not in KEYWORDS:
            self.take()
            return ListName(tok.text, tok.pos)
        if allow_single and tok.kind == "string":
            self.take()
            return Value(tok.text, True, tok.pos)
        raise ConditionError(f"expected '(' or a list name after '{op}', got {_describe(tok)}", tok.pos)


def _describe(tok: Token) -> str:
    if tok.kind == "end":
        return "the end of the condition"
    if tok.kind == "string":
        return f"string {tok.text!r}"
    return f"'{tok.text}'"
