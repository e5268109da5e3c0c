"""Query parameters: `?` placeholders, their types, and bound values."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from datafusion import LogicalPlan

from engine.errors import InvalidQuery


def number_placeholders(sql: str) -> str:
    """Rewrite each `?` outside strings, quoted names and comments as `$1`, `$2`, ...

    JDBC and ADBC users write `?`; DataFusion plans numbered placeholders.
    """
    out: list[str] = []
    count = 0
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in ("'", '"'):
            end = _closing_quote(sql, i)
            out.append(sql[i:end])
            i = end
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(sql[i:end])
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(sql[i:end])
            i = end
        elif ch == "?":
            count += 1
            out.append(f"${count}")
            i += 1
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _closing_quote(sql: str, start: int) -> int:
    quote = sql[start]
    i = start + 1
    while i < len(sql):
        if sql[i] == quote:
            if i + 1 < len(sql) and sql[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return len(sql)


def parameter_schema(plan: LogicalPlan) -> pa.Schema:
    """The placeholders of `plan` as fields `$1`, `$2`, ... typed where DataFusion inferred."""
    found: dict[str, pa.DataType] = {}
    _walk_plan(plan, found)
    ordered = sorted(found.items(), key=lambda item: _placeholder_number(item[0]))
    return pa.schema([pa.field(name, dtype, nullable=True) for name, dtype in ordered])


def _placeholder_number(name: str) -> int:
    digits = name.lstrip("$")
    return int(digits) if digits.isdigit() else 0


# Plan-node accessors that return expressions; plan nodes cannot be walked generically.
_EXPR_ACCESSORS = (
    "projections", "predicate", "aggregate_exprs", "group_by_exprs", "sort_exprs",
    "having", "filter", "on", "skip", "fetch", "window_exprs", "values", "exprs", "expr",
)


def _walk_plan(plan: LogicalPlan, found: dict[str, pa.DataType]) -> None:
    node = plan.to_variant()
    for accessor in _EXPR_ACCESSORS:
        method = getattr(node, accessor, None)
        if method is None:
            continue
        try:
            value = method()
        except Exception:
            continue
        for expr in _flatten(value):
            _walk_expr(expr, found)
    for child in plan.inputs():
        _walk_plan(child, found)


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, list | tuple):
        return [leaf for item in value for leaf in _flatten(item)]
    return [value] if hasattr(value, "variant_name") else []


def _walk_expr(expr: Any, found: dict[str, pa.DataType]) -> None:
    try:
        kind = expr.variant_name()
    except Exception:
        return
    if kind == "Placeholder":
        placeholder = expr.to_variant()
        name = placeholder.id()
        try:
            found[name] = placeholder.field().type
        except Exception:
            found.setdefault(name, pa.null())
        return
    try:
        children = expr.rex_call_operands()
    except Exception:
        return
    for child in children:
        _walk_expr(child, found)


def bound_values(batch: pa.RecordBatch | None) -> dict[str, Any]:
    """The one row of bound parameters as DataFusion `param_values` ({"1": scalar, ...})."""
    if batch is None or batch.num_columns == 0:
        return {}
    if batch.num_rows != 1:
        raise InvalidQuery(
            f"a query takes exactly one row of parameters, got {batch.num_rows}"
        )
    return {str(i + 1): _scalar(batch.column(i)[0]) for i in range(batch.num_columns)}


def _scalar(value: pa.Scalar) -> pa.Scalar:
    # flightsql-dbapi and JDBC send dense unions: bind the member that is set.
    if isinstance(value, pa.UnionScalar):
        inner = value.value
        return inner if inner is not None else pa.scalar(None)
    if pa.types.is_string_view(value.type) or pa.types.is_large_string(value.type):
        return value.cast(pa.string())
    return value
