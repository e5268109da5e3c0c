"""Client SQL dialects, transpiled with sqlglot to SQL DataFusion plans."""

from __future__ import annotations

import re
from functools import cache

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, SqlglotError

from engine.errors import InvalidQuery

DATAFUSION = "datafusion"
# Postgres output is the sqlglot dialect closest to DataFusion's SQL.
_TARGET = "postgres"


@cache
def supported_dialects() -> tuple[str, ...]:
    """Asked at every call that names a session's dialect; sqlglot imports each of its
    dialect modules to list them (0.1-0.2 ms), so the list is made once."""
    return tuple(sorted({name for name in Dialect.classes if name} | {DATAFUSION}))


def check_dialect(name: str) -> str:
    dialect = name.strip().lower()
    if dialect not in supported_dialects():
        raise InvalidQuery(
            f"unknown SQL dialect {name!r}; one of: {', '.join(supported_dialects())}"
        )
    return dialect


def to_datafusion(sql: str, dialect: str) -> str:
    """`sql` written in `dialect`, as DataFusion SQL (unchanged for datafusion).

    Positional `?` parameters become DataFusion's `$1`, `$2`, ...
    """
    if dialect == DATAFUSION:
        return sql
    try:
        trees = [t for t in sqlglot.parse(sql, read=dialect) if t is not None]
    except ParseError as exc:
        raise InvalidQuery(f"{dialect} SQL error {_position(exc)}") from None
    except SqlglotError as exc:
        raise InvalidQuery(f"{dialect} SQL error: {_one_line(str(exc))}") from None
    if len(trees) != 1:
        raise InvalidQuery(f"expected one {dialect} statement, got {len(trees)}")
    count = 0

    def number(node: exp.Expression) -> exp.Expression:
        nonlocal count
        if isinstance(node, exp.Placeholder) and not node.this:
            count += 1
            return exp.Parameter(this=exp.Literal.number(count))
        return node

    try:
        return trees[0].transform(number).sql(dialect=_TARGET)
    except SqlglotError as exc:
        raise InvalidQuery(f"{dialect} SQL cannot be translated: {_one_line(str(exc))}") from None


def _position(exc: ParseError) -> str:
    first = exc.errors[0] if exc.errors else {}
    description = re.sub(r"<Token token_type: [^,]*, text: ([^,]*),[^>]*>", r"'\1'",
                         str(first.get("description", exc)))
    return (f"at line {first.get('line', '?')}, column {first.get('col', '?')}: "
            f"{_one_line(description)}")


def _one_line(text: str) -> str:
    return " ".join(text.split())[:300]
