"""GetSqlInfo: every SqlInfo id of the spec, each with the value kind the spec gives it.

DBeaver asks for all ids and fails on a missing one, so the table is complete.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from flight_server.generated import FlightSql_pb2 as sql

# Member order is the union's type ids 0..5 (spec).
_STRING, _BOOL, _BIGINT, _INT32, _STRING_LIST, _INT32_MAP = range(6)

VALUE_TYPE = pa.union(
    [
        pa.field("string_value", pa.string()),
        pa.field("bool_value", pa.bool_()),
        pa.field("bigint_value", pa.int64()),
        pa.field("int32_bitmask", pa.int32()),
        pa.field("string_list", pa.list_(pa.field("string_data", pa.string()))),
        pa.field(
            "int32_to_int32_list_map",
            pa.map_(pa.int32(), pa.list_(pa.field("$data$", pa.int32()))),
        ),
    ],
    mode="dense",
)

SCHEMA = pa.schema(
    [pa.field("info_name", pa.uint32(), nullable=False), pa.field("value", VALUE_TYPE, False)]
)

_KEYWORDS = [
    "ANALYZE", "ASOF", "COPY", "DESCRIBE", "EXPLAIN", "EXTERNAL", "ILIKE", "QUALIFY",
    "SHOW", "UNNEST", "VERBOSE",
]
_NUMERIC = [
    "abs", "acos", "asin", "atan", "atan2", "cbrt", "ceil", "cos", "degrees", "exp",
    "floor", "gcd", "lcm", "ln", "log", "log10", "log2", "mod", "pi", "power", "radians",
    "random", "round", "signum", "sin", "sqrt", "tan", "trunc",
]
_STRINGS = [
    "ascii", "bit_length", "btrim", "char_length", "concat", "concat_ws", "initcap",
    "left", "length", "lower", "lpad", "ltrim", "octet_length", "position", "repeat",
    "replace", "reverse", "right", "rpad", "rtrim", "split_part", "starts_with", "strpos",
    "substr", "substring", "to_hex", "translate", "trim", "upper",
]
_SYSTEM = ["arrow_typeof", "version"]
_DATETIME = [
    "current_date", "current_time", "current_timestamp", "date_bin", "date_part",
    "date_trunc", "extract", "from_unixtime", "now", "to_timestamp",
]

_INT64_MAX = (1 << 63) - 1


def _bits(*positions: int) -> int:
    value = 0
    for position in positions:
        value |= 1 << position
    return value


def server_values(server_version: str, read_only: bool) -> dict[str, tuple[int, Any]]:
    """SqlInfo name -> (union member, value)."""
    v = sql
    unlimited = (_BIGINT, 0)  # 0 means "no limit / unknown" in JDBC terms
    values: dict[str, tuple[int, Any]] = {
        "FLIGHT_SQL_SERVER_NAME": (_STRING, "Krishiv"),
        "FLIGHT_SQL_SERVER_VERSION": (_STRING, server_version),
        "FLIGHT_SQL_SERVER_ARROW_VERSION": (_STRING, pa.__version__),
        "FLIGHT_SQL_SERVER_READ_ONLY": (_BOOL, read_only),
        "FLIGHT_SQL_SERVER_SQL": (_BOOL, True),
        "FLIGHT_SQL_SERVER_SUBSTRAIT": (_BOOL, False),
        "FLIGHT_SQL_SERVER_SUBSTRAIT_MIN_VERSION": (_STRING, ""),
        "FLIGHT_SQL_SERVER_SUBSTRAIT_MAX_VERSION": (_STRING, ""),
        "FLIGHT_SQL_SERVER_TRANSACTION": (
            _INT32, v.SqlSupportedTransaction.Value("SQL_SUPPORTED_TRANSACTION_NONE")),
        "FLIGHT_SQL_SERVER_CANCEL": (_BOOL, True),
        "FLIGHT_SQL_SERVER_BULK_INGESTION": (_BOOL, True),
        "FLIGHT_SQL_SERVER_INGEST_TRANSACTIONS_SUPPORTED": (_BOOL, False),
        "FLIGHT_SQL_SERVER_STATEMENT_TIMEOUT": (_INT32, 0),
        "FLIGHT_SQL_SERVER_TRANSACTION_TIMEOUT": (_INT32, 0),
        "SQL_DDL_CATALOG": (_BOOL, False),
        "SQL_DDL_SCHEMA": (_BOOL, True),
        "SQL_DDL_TABLE": (_BOOL, True),
        "SQL_IDENTIFIER_CASE": (
            _INT32, v.SqlSupportedCaseSensitivity.Value("SQL_CASE_SENSITIVITY_LOWERCASE")),
        "SQL_IDENTIFIER_QUOTE_CHAR": (_STRING, '"'),
        # Quoted names keep their case and match exactly: no enum member says that.
        "SQL_QUOTED_IDENTIFIER_CASE": (
            _INT32, v.SqlSupportedCaseSensitivity.Value("SQL_CASE_SENSITIVITY_UNKNOWN")),
        "SQL_ALL_TABLES_ARE_SELECTABLE": (_BOOL, True),
        "SQL_NULL_ORDERING": (_INT32, v.SqlNullOrdering.Value("SQL_NULLS_SORTED_HIGH")),
        "SQL_KEYWORDS": (_STRING_LIST, _KEYWORDS),
        "SQL_NUMERIC_FUNCTIONS": (_STRING_LIST, _NUMERIC),
        "SQL_STRING_FUNCTIONS": (_STRING_LIST, _STRINGS),
        "SQL_SYSTEM_FUNCTIONS": (_STRING_LIST, _SYSTEM),
        "SQL_DATETIME_FUNCTIONS": (_STRING_LIST, _DATETIME),
        "SQL_SEARCH_STRING_ESCAPE": (_STRING, "\\"),
        "SQL_EXTRA_NAME_CHARACTERS": (_STRING, ""),
        "SQL_SUPPORTS_COLUMN_ALIASING": (_BOOL, True),
        "SQL_NULL_PLUS_NULL_IS_NULL": (_BOOL, True),
        "SQL_SUPPORTS_CONVERT": (_INT32_MAP, []),
        "SQL_SUPPORTS_TABLE_CORRELATION_NAMES": (_BOOL, True),
        "SQL_SUPPORTS_DIFFERENT_TABLE_CORRELATION_NAMES": (_BOOL, False),
        "SQL_SUPPORTS_EXPRESSIONS_IN_ORDER_BY": (_BOOL, True),
        "SQL_SUPPORTS_ORDER_BY_UNRELATED": (_BOOL, True),
        "SQL_SUPPORTED_GROUP_BY": (
            _INT32, _bits(v.SqlSupportedGroupBy.Value("SQL_GROUP_BY_UNRELATED"))),
        "SQL_SUPPORTS_LIKE_ESCAPE_CLAUSE": (_BOOL, False),
        "SQL_SUPPORTS_NON_NULLABLE_COLUMNS": (_BOOL, True),
        "SQL_SUPPORTED_GRAMMAR": (
            _INT32, _bits(v.SupportedSqlGrammar.Value("SQL_MINIMUM_GRAMMAR"),
                          v.SupportedSqlGrammar.Value("SQL_CORE_GRAMMAR"))),
        "SQL_ANSI92_SUPPORTED_LEVEL": (
            _INT32, _bits(v.SupportedAnsi92SqlGrammarLevel.Value("ANSI92_ENTRY_SQL"))),
        "SQL_SUPPORTS_INTEGRITY_ENHANCEMENT_FACILITY": (_BOOL, False),
        "SQL_OUTER_JOINS_SUPPORT_LEVEL": (
            _INT32, v.SqlOuterJoinsSupportLevel.Value("SQL_FULL_OUTER_JOINS")),
        "SQL_SCHEMA_TERM": (_STRING, "schema"),
        "SQL_PROCEDURE_TERM": (_STRING, "procedure"),
        "SQL_CATALOG_TERM": (_STRING, "catalog"),
        "SQL_CATALOG_AT_START": (_BOOL, True),
        "SQL_SCHEMAS_SUPPORTED_ACTIONS": (_INT32, 0),
        "SQL_CATALOGS_SUPPORTED_ACTIONS": (_INT32, 0),
        "SQL_SUPPORTED_POSITIONED_COMMANDS": (_INT32, 0),
        "SQL_SELECT_FOR_UPDATE_SUPPORTED": (_BOOL, False),
        "SQL_STORED_PROCEDURES_SUPPORTED": (_BOOL, False),
        "SQL_SUPPORTED_SUBQUERIES": (
            _INT32, _bits(*(v.SqlSupportedSubqueries.Value(n) for n in (
                "SQL_SUBQUERIES_IN_COMPARISONS", "SQL_SUBQUERIES_IN_EXISTS",
                "SQL_SUBQUERIES_IN_INS", "SQL_SUBQUERIES_IN_QUANTIFIEDS")))),
        "SQL_CORRELATED_SUBQUERIES_SUPPORTED": (_BOOL, True),
        "SQL_SUPPORTED_UNIONS": (
            _INT32, _bits(v.SqlSupportedUnions.Value("SQL_UNION"),
                          v.SqlSupportedUnions.Value("SQL_UNION_ALL"))),
        "SQL_MAX_BINARY_LITERAL_LENGTH": unlimited,
        "SQL_MAX_CHAR_LITERAL_LENGTH": unlimited,
        "SQL_MAX_COLUMN_NAME_LENGTH": unlimited,
        "SQL_MAX_COLUMNS_IN_GROUP_BY": unlimited,
        "SQL_MAX_COLUMNS_IN_INDEX": unlimited,
        "SQL_MAX_COLUMNS_IN_ORDER_BY": unlimited,
        "SQL_MAX_COLUMNS_IN_SELECT": unlimited,
        "SQL_MAX_COLUMNS_IN_TABLE": unlimited,
        "SQL_MAX_CONNECTIONS": unlimited,
        "SQL_MAX_CURSOR_NAME_LENGTH": unlimited,
        "SQL_MAX_INDEX_LENGTH": unlimited,
        "SQL_DB_SCHEMA_NAME_LENGTH": unlimited,
        "SQL_MAX_PROCEDURE_NAME_LENGTH": unlimited,
        "SQL_MAX_CATALOG_NAME_LENGTH": unlimited,
        "SQL_MAX_ROW_SIZE": unlimited,
        "SQL_MAX_ROW_SIZE_INCLUDES_BLOBS": (_BOOL, True),
        "SQL_MAX_STATEMENT_LENGTH": unlimited,
        "SQL_MAX_STATEMENTS": unlimited,
        "SQL_MAX_TABLE_NAME_LENGTH": unlimited,
        "SQL_MAX_TABLES_IN_SELECT": unlimited,
        "SQL_MAX_USERNAME_LENGTH": unlimited,
        "SQL_DEFAULT_TRANSACTION_ISOLATION": (
            _BIGINT, v.SqlTransactionIsolationLevel.Value("SQL_TRANSACTION_NONE")),
        "SQL_TRANSACTIONS_SUPPORTED": (_BOOL, False),
        "SQL_SUPPORTED_TRANSACTIONS_ISOLATION_LEVELS": (_INT32, 0),
        "SQL_DATA_DEFINITION_CAUSES_TRANSACTION_COMMIT": (_BOOL, False),
        "SQL_DATA_DEFINITIONS_IN_TRANSACTIONS_IGNORED": (_BOOL, False),
        "SQL_SUPPORTED_RESULT_SET_TYPES": (
            _INT32, _bits(v.SqlSupportedResultSetType.Value(
                "SQL_RESULT_SET_TYPE_FORWARD_ONLY"))),
        "SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_UNSPECIFIED": (_INT32, 0),
        "SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_FORWARD_ONLY": (
            _INT32, _bits(v.SqlSupportedResultSetConcurrency.Value(
                "SQL_RESULT_SET_CONCURRENCY_READ_ONLY"))),
        "SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_SCROLL_SENSITIVE": (_INT32, 0),
        "SQL_SUPPORTED_CONCURRENCIES_FOR_RESULT_SET_SCROLL_INSENSITIVE": (_INT32, 0),
        "SQL_BATCH_UPDATES_SUPPORTED": (_BOOL, False),
        "SQL_SAVEPOINTS_SUPPORTED": (_BOOL, False),
        "SQL_NAMED_PARAMETERS_SUPPORTED": (_BOOL, False),
        "SQL_LOCATORS_UPDATE_COPY": (_BOOL, False),
        "SQL_STORED_FUNCTIONS_USING_CALL_SYNTAX_SUPPORTED": (_BOOL, False),
    }
    return values


def sql_info_batch(
    requested: Iterable[int], server_version: str, read_only: bool
) -> pa.RecordBatch:
    """Rows for `requested` ids (all known ids when empty), in id order; unknown ids skipped."""
    by_id = {
        sql.SqlInfo.Value(name): kind_value
        for name, kind_value in server_values(server_version, read_only).items()
    }
    wanted = sorted(set(requested)) or sorted(by_id)
    ids = [i for i in wanted if i in by_id]
    return pa.RecordBatch.from_arrays([pa.array(ids, pa.uint32()), _union([by_id[i] for i in ids])],
                                      schema=SCHEMA)


def _union(entries: list[tuple[int, Any]]) -> pa.Array:
    members: list[list[Any]] = [[] for _ in range(6)]
    type_ids: list[int] = []
    offsets: list[int] = []
    for kind, value in entries:
        type_ids.append(kind)
        offsets.append(len(members[kind]))
        members[kind].append(value)
    children = [
        pa.array(values, type=VALUE_TYPE.field(kind).type) for kind, values in enumerate(members)
    ]
    return pa.UnionArray.from_dense(
        pa.array(type_ids, pa.int8()),
        pa.array(offsets, pa.int32()),
        children,
        [VALUE_TYPE.field(k).name for k in range(6)],
        list(range(6)),
    )
