"""Which catalog tables a SQL text names, found before DataFusion plans it."""

from __future__ import annotations

import logging
import re
from collections.abc import Collection

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from catalog import TableIdent
from engine.text_cache import by_short_text

# sqlglot cannot parse EXPLAIN: look at the statement it explains.
_EXPLAIN = re.compile(r"^\s*EXPLAIN(\s+(ANALYZE|VERBOSE|FORMAT\s+\w+))*\s+", re.IGNORECASE)
# sqlglot warns on the stderr about SQL it only partly parses; the lazy path covers those.
logging.getLogger("sqlglot").setLevel(logging.ERROR)


def referenced_tables(sql: str, default_schema: str) -> frozenset[TableIdent]:
    """Tables named in `sql`, with unquoted names folded to lower case as DataFusion does.

    Best effort: text sqlglot cannot parse yields nothing, and DataFusion will still
    find those tables through the slower lazy path.
    """
    return all_referenced_tables(sql, default_schema) or frozenset()


# Parsing costs milliseconds and clients repeat their statements (prepare, then execute).
@by_short_text(maxsize=512)
def all_referenced_tables(sql: str, default_schema: str) -> frozenset[TableIdent] | None:
    """Every table `sql` names, or None when sqlglot cannot parse it (then some may be
    missing)."""
    statements = _statements(sql)
    if statements is None:
        return None
    found: set[TableIdent] = set()
    for statement in statements:
        for table in statement.find_all(exp.Table):
            name = _identifier(table.this)
            if not name:
                continue
            schema = _identifier(table.args.get("db")) or default_schema
            found.add(TableIdent(schema, name))
    return frozenset(found)


def _identifier(node: exp.Expression | None) -> str:
    if not isinstance(node, exp.Identifier):
        return ""
    return node.this if node.quoted else node.this.lower()


# Planning fixes these functions' values (DataFusion folds them into constants).
_FIXED_AT_PLANNING = re.compile(
    r"\b(now|today|current_date|current_time|current_timestamp|localtime|localtimestamp)\b",
    re.IGNORECASE)


def plans_alike(sql: str, default_schema: str, found: Collection[TableIdent]) -> bool:
    """Whether every plan of `sql` over the catalog tables `found`, at the same versions,
    is the same plan: `sql` reads the clock nowhere and reads nothing but `found` and the
    names it defines itself (WITH). Not information_schema's tables, which have no
    version to tell a change by, nor text the parser cannot read."""
    named = all_referenced_tables(sql, default_schema)
    if named is None or not found or _FIXED_AT_PLANNING.search(sql):
        return False
    defined = {TableIdent(default_schema, name) for name in defined_names(sql)}
    return named - set(found) <= defined


@by_short_text(maxsize=512)
def defined_names(sql: str) -> frozenset[str]:
    """The names `sql` defines for itself (WITH), which read like tables but are not."""
    return frozenset(_identifier(cte.args["alias"].this) for statement in _statements(sql) or ()
                     for cte in statement.find_all(exp.CTE)
                     if isinstance(cte.args.get("alias"), exp.TableAlias))


def _statements(sql: str) -> list[exp.Expr] | None:
    """The parsed statements of `sql`, or None when sqlglot cannot parse it."""
    try:
        parsed = sqlglot.parse(_EXPLAIN.sub("", sql), read="postgres")
    except SqlglotError:
        return None
    return [statement for statement in parsed if statement is not None]
