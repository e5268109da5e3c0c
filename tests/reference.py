"""Independent answers: DuckDB (with its tpch extension's query texts) on our data files."""

from __future__ import annotations

import datetime
import decimal
from pathlib import Path

import duckdb
import duckdb_extension_tpch

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
