"""Independent answers: DuckDB (with its tpch extension's query texts) on our data files."""

from __future__ import annotations

import datetime
import decimal
from dataclasses import dataclass
from pathlib import Path

import duckdb
import duckdb_extension_tpch
import sqlglot
from sqlglot import exp

from catalog import Catalog, TableIdent
from engine.demo import DEMO_NAMESPACE, TPCH_TABLES

_EXTENSION = (
    Path(duckdb_extension_tpch.__file__).parent / "extensions" / "v1.5.5" / "tpch.duckdb_extension"
)


def duckdb_over_catalog(catalog: Catalog) -> duckdb.DuckDBPyConnection:
    """DuckDB with a view per TPC-H table over the very Parquet files the catalog holds."""
    con = duckdb.connect()
    # Loaded by path: `LOAD tpch` would try to download it.
    con.execute(f"LOAD '{_EXTENSION}'")
    for name in TPCH_TABLES:
        files = catalog.scan(TableIdent(DEMO_NAMESPACE, name)).data_files
        listed = ", ".join(f"'{f}'" for f in files)
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{listed}])")
    return con


def tpch_queries(con: duckdb.DuckDBPyConnection) -> dict[int, str]:
    rows = con.execute("SELECT query_nr, query FROM tpch_queries()").fetchall()
    return {int(nr): str(text) for nr, text in rows}


def normalized(value: object) -> object:
    if isinstance(value, float | decimal.Decimal):
        return round(float(value), 2)
    if isinstance(value, datetime.date | datetime.datetime):
        return value.isoformat()
    return value


def as_multiset(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    return sorted((tuple(normalized(v) for v in row) for row in rows), key=repr)


def order_keys(sql: str, names: list[str]) -> list[int]:
    """The output columns (indexes into `names`) that the query's outermost ORDER BY
    sorts by; [] without one."""
    order = sqlglot.parse_one(sql, read="duckdb").args.get("order")
    if order is None:
        return []
    lowered = [name.lower() for name in names]
    keys = []
    for item in order.expressions:
        key = item.this
        if isinstance(key, exp.Column) and key.name.lower() in lowered:
            keys.append(lowered.index(key.name.lower()))
        elif isinstance(key, exp.Literal) and key.is_int:
            keys.append(int(key.this) - 1)
        else:
            raise ValueError(f"ORDER BY {key.sql()} is not an output column")
    return keys


def in_order(rows: list[tuple[object, ...]], keys: list[int]) -> list[tuple[object, ...]]:
    """Each row's sort keys, in the rows' order: equal for two correctly ordered answers
    to the same query, however each broke ties."""
    return [tuple(normalized(row[k]) for k in keys) for row in rows]


@dataclass(frozen=True)
class Answer:
    """DuckDB's answer to a query: its rows, and the sort keys of each row in order."""

    rows: list[tuple[object, ...]]
    keys: list[int]
    ordered: list[tuple[object, ...]]

    def matches(self, got: list[tuple[object, ...]]) -> bool:
        """Whether `got` holds these rows, in the order the query's ORDER BY asks for."""
        return as_multiset(got) == self.rows and in_order(got, self.keys) == self.ordered


def reference_answer(duck: duckdb.DuckDBPyConnection, sql: str) -> Answer:
    result = duck.execute(sql)
    expected = result.fetchall()
    keys = order_keys(sql, [column[0] for column in result.description])
    return Answer(as_multiset(expected), keys, in_order(expected, keys))


def matches(got: list[tuple[object, ...]], duck: duckdb.DuckDBPyConnection,
            sql: str) -> bool:
    return reference_answer(duck, sql).matches(got)
