"""Fitting incoming rows to a table's schema."""

from __future__ import annotations

import pyarrow as pa

from catalog.errors import InvalidData


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def fit_rows(rows: pa.Table, target: pa.Schema) -> pa.Table:
    """`rows` renamed and cast to `target`, refusing NULLs in required columns."""
    if rows.num_columns != len(target):
        raise InvalidData(
            f"expected {len(target)} columns ({', '.join(target.names)}), got {rows.num_columns}"
        )
    columns = []
    for column, field in zip(rows.columns, target, strict=True):
        if not field.nullable and column.null_count:
            raise InvalidData(f"NULL value in NOT NULL column {field.name}")
        try:
            columns.append(column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise InvalidData(f"column {field.name}: {_first_line(exc)}") from None
    return pa.Table.from_arrays(columns, schema=target)
