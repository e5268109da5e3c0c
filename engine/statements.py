"""Recognising the write statements the server runs itself (DDL and DML on the catalog).

Everything else goes to DataFusion read-only. Recognition uses sqlglot's tokenizer,
which keeps character offsets, so the parts handed on (a CTAS query, column
definitions) are the client's own text, not a re-rendering.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import sqlglot
from sqlglot.errors import SqlglotError
from sqlglot.tokens import Token, TokenType

from engine.errors import InvalidQuery


class WriteKind(enum.Enum):
    CREATE_TABLE = "CREATE TABLE"
    CREATE_TABLE_AS = "CREATE TABLE AS"
    INSERT = "INSERT"
    DROP_TABLE = "DROP TABLE"
    CREATE_SCHEMA = "CREATE SCHEMA"
    DROP_SCHEMA = "DROP SCHEMA"


@dataclass(frozen=True)
class WriteStatement:
    kind: WriteKind
    name: tuple[str, ...] = ()  # qualified name parts, unquoted ones lower-cased
    if_exists: bool = False  # IF EXISTS (drops) or IF NOT EXISTS (creates)
    cascade: bool = False
    body: str = ""  # column definitions (CREATE TABLE) or the query (CTAS)


def _words(tokens: list[Token]) -> list[str]:
    return [t.text.upper() if t.token_type != TokenType.IDENTIFIER else "" for t in tokens]


def classify(sql: str) -> WriteStatement | None:
    """The write statement `sql` is, or None for anything DataFusion should plan."""
    try:
        tokens = [t for t in sqlglot.tokenize(sql) if t.token_type != TokenType.SEMICOLON]
    except SqlglotError:
        return None
    words = _words(tokens)
    if not words:
        return None
    if words[0] == "INSERT":
        return WriteStatement(WriteKind.INSERT)
    if len(words) < 3 or words[0] not in ("CREATE", "DROP"):
        return None
    if words[1] == "OR":
        raise InvalidQuery("CREATE OR REPLACE is not supported; DROP the table first")
    if words[1] in ("SCHEMA", "DATABASE"):
        kind = WriteKind.CREATE_SCHEMA if words[0] == "CREATE" else WriteKind.DROP_SCHEMA
    elif words[1] == "TABLE":
        kind = WriteKind.CREATE_TABLE if words[0] == "CREATE" else WriteKind.DROP_TABLE
    else:
        return None
    position = 2
    if_exists = False
    guard = ["IF", "NOT", "EXISTS"] if words[0] == "CREATE" else ["IF", "EXISTS"]
    if words[position:position + len(guard)] == guard:
        if_exists = True
        position += len(guard)
    name, position = _qualified_name(tokens, position, sql)
    rest = tokens[position:]
    cascade = bool(rest) and _words(rest)[0] == "CASCADE"
    if kind is not WriteKind.CREATE_TABLE and rest and not (
        kind is WriteKind.DROP_SCHEMA and len(rest) == 1 and _words(rest)[0] in ("CASCADE",
                                                                               "RESTRICT")
    ):
        raise InvalidQuery(f"unexpected {rest[0].text!r} after the name in {kind.value}; "
                           "one object per statement")
    body = ""
    if kind is WriteKind.CREATE_TABLE and rest:
        if rest[0].token_type == TokenType.ALIAS:
            kind = WriteKind.CREATE_TABLE_AS
            body = sql[rest[0].end + 1:]
        elif _has_top_level_as(rest):
            raise InvalidQuery("CREATE TABLE with both columns and AS is not supported")
        else:
            body = sql[rest[0].start:]
        body = body.strip().rstrip(";").strip()
    return WriteStatement(kind, name, if_exists, cascade, body)


def _qualified_name(tokens: list[Token], position: int, sql: str) -> tuple[tuple[str, ...], int]:
    parts: list[str] = []
    while position < len(tokens):
        token = tokens[position]
        if token.token_type in (TokenType.L_PAREN, TokenType.ALIAS):
            break
        quoted = token.token_type == TokenType.IDENTIFIER
        part = token.text if quoted else token.text.lower()
        if not part or "." in part:
            raise InvalidQuery(f"invalid name {token.text!r}: names must be non-empty, no dots")
        parts.append(part)
        position += 1
        if position < len(tokens) and tokens[position].token_type == TokenType.DOT:
            position += 1
            continue
        break
    if not parts:
        raise InvalidQuery(f"expected a name in: {' '.join(sql.split())[:200]}")
    return tuple(parts), position


def _has_top_level_as(tokens: list[Token]) -> bool:
    depth = 0
    for token in tokens:
        if token.token_type == TokenType.L_PAREN:
            depth += 1
        elif token.token_type == TokenType.R_PAREN:
            depth -= 1
        elif token.token_type == TokenType.ALIAS and depth == 0:
            return True
    return False
