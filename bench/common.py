"""Helpers shared by the benchmarks: percentiles, markdown tables, ADBC connections.

Kept light (no product imports) because client processes started with the "spawn"
context import the benchmark module, and with it this one.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) of `values`, linear between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def adbc_connect(port: int) -> Any:
    """An ADBC Flight SQL DB-API connection to a local server."""
    import adbc_driver_flightsql.dbapi as flightsql

    warnings.filterwarnings("ignore", message="Cannot disable autocommit")
    return flightsql.connect(f"grpc://127.0.0.1:{port}")


_GRPC_CODES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "CANCELLED",
               "INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED", "PERMISSION_DENIED",
               "INTERNAL", "UNIMPLEMENTED", "ALREADY_EXISTS", "UNKNOWN")


def error_status(exc: BaseException) -> str:
    """The gRPC status named in an ADBC/Flight error, else the exception's type name.

    The Flight SQL driver reports gRPC statuses in its messages as e.g.
    `[FlightSQL] ... (Unavailable; ExecuteQuery)`; pyarrow's as `FlightUnavailableError`.
    """
    text = f"{type(exc).__name__} {exc}"
    named = re.search(r"\(([A-Za-z]+); [^()]*\)", text)
    if named:
        return re.sub(r"(?<!^)(?=[A-Z])", "_", named.group(1)).upper()
    squashed = re.sub(r"[^a-z]", "", text.lower())
    for code in _GRPC_CODES:
        if code.replace("_", "").lower() in squashed:
            return code
    return type(exc).__name__


def ms(seconds: float) -> str:
    """Milliseconds for a table cell; "-" when there was nothing to measure."""
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.2f}"
