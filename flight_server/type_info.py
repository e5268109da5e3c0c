"""GetXdbcTypeInfo: the SQL types this server returns, described as JDBC/ODBC expect."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from flight_server.generated import FlightSql_pb2 as sql

SCHEMA = pa.schema([
    pa.field("type_name", pa.string(), False),
    pa.field("data_type", pa.int32(), False),
    pa.field("column_size", pa.int32()),
    pa.field("literal_prefix", pa.string()),
    pa.field("literal_suffix", pa.string()),
    pa.field("create_params", pa.list_(pa.field("item", pa.string(), False))),
    pa.field("nullable", pa.int32(), False),
    pa.field("case_sensitive", pa.bool_(), False),
    pa.field("searchable", pa.int32(), False),
    pa.field("unsigned_attribute", pa.bool_()),
    pa.field("fixed_prec_scale", pa.bool_(), False),
    pa.field("auto_increment", pa.bool_()),
    pa.field("local_type_name", pa.string()),
    pa.field("minimum_scale", pa.int32()),
    pa.field("maximum_scale", pa.int32()),
    pa.field("sql_data_type", pa.int32(), False),
    pa.field("datetime_subcode", pa.int32()),
    pa.field("num_prec_radix", pa.int32()),
    pa.field("interval_precision", pa.int32()),
])


@dataclass(frozen=True)
class SqlType:
    name: str
    xdbc: int
    size: int | None = None
    prefix: str | None = None
    suffix: str | None = None
    params: tuple[str, ...] | None = None
    text: bool = False
    numeric: bool = False
    radix: int | None = None
    scales: tuple[int, int] | None = None
    subcode: int | None = None  # datetime types: sql_data_type is XDBC_DATETIME


_TYPES = [
    SqlType("BOOLEAN", sql.XDBC_BIT, 1),
    SqlType("TINYINT", sql.XDBC_TINYINT, 3, numeric=True, radix=10),
    SqlType("SMALLINT", sql.XDBC_SMALLINT, 5, numeric=True, radix=10),
    SqlType("INTEGER", sql.XDBC_INTEGER, 10, numeric=True, radix=10),
    SqlType("BIGINT", sql.XDBC_BIGINT, 19, numeric=True, radix=10),
    SqlType("FLOAT", sql.XDBC_FLOAT, 24, numeric=True, radix=2),
    SqlType("DOUBLE", sql.XDBC_DOUBLE, 53, numeric=True, radix=2),
    SqlType("DECIMAL", sql.XDBC_DECIMAL, 38, params=("precision", "scale"), numeric=True,
            radix=10, scales=(0, 38)),
    SqlType("VARCHAR", sql.XDBC_VARCHAR, None, "'", "'", text=True),
    SqlType("VARBINARY", sql.XDBC_VARBINARY, None, "X'", "'"),
    SqlType("DATE", sql.XDBC_DATE, 10, "DATE '", "'", subcode=sql.XDBC_SUBCODE_DATE),
    SqlType("TIME", sql.XDBC_TIME, 15, "TIME '", "'", subcode=sql.XDBC_SUBCODE_TIME),
    SqlType("TIMESTAMP", sql.XDBC_TIMESTAMP, 26, "TIMESTAMP '", "'",
            subcode=sql.XDBC_SUBCODE_TIMESTAMP),
]


def type_info(data_type: int | None) -> pa.Table:
    """Rows for every type (or only `data_type`), ordered by data_type, then type_name."""
    chosen = sorted((t for t in _TYPES if data_type is None or t.xdbc == data_type),
                    key=lambda t: (t.xdbc, t.name))
    rows = [{
        "type_name": t.name,
        "data_type": t.xdbc,
        "column_size": t.size,
        "literal_prefix": t.prefix,
        "literal_suffix": t.suffix,
        "create_params": list(t.params) if t.params else None,
        "nullable": sql.NULLABILITY_NULLABLE,
        "case_sensitive": t.text,
        "searchable": sql.SEARCHABLE_FULL if t.text else sql.SEARCHABLE_BASIC,
        "unsigned_attribute": False if t.numeric else None,
        "fixed_prec_scale": False,
        "auto_increment": False if t.numeric else None,
        "local_type_name": t.name,
        "minimum_scale": t.scales[0] if t.scales else None,
        "maximum_scale": t.scales[1] if t.scales else None,
        "sql_data_type": sql.XDBC_DATETIME if t.subcode is not None else t.xdbc,
        "datetime_subcode": t.subcode,
        "num_prec_radix": t.radix,
        "interval_precision": None,
    } for t in chosen]
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def sql_type_name(dtype: pa.DataType) -> str:
    """The SQL name (as listed by GetXdbcTypeInfo) of an Arrow type we return."""
    checks = [
        (pa.types.is_boolean, "BOOLEAN"), (pa.types.is_int8, "TINYINT"),
        (pa.types.is_int16, "SMALLINT"), (pa.types.is_int32, "INTEGER"),
        (pa.types.is_int64, "BIGINT"), (pa.types.is_float32, "FLOAT"),
        (pa.types.is_float64, "DOUBLE"), (pa.types.is_decimal, "DECIMAL"),
        (pa.types.is_string, "VARCHAR"), (pa.types.is_binary, "VARBINARY"),
        (pa.types.is_date, "DATE"), (pa.types.is_time, "TIME"),
        (pa.types.is_timestamp, "TIMESTAMP"),
    ]
    return next((name for check, name in checks if check(dtype)), str(dtype).upper())


def column_metadata(field: pa.Field, catalog: str, schema: str, table: str) -> dict[str, str]:
    """The ARROW:FLIGHT:SQL:* field metadata JDBC reads for column descriptions."""
    prefix = "ARROW:FLIGHT:SQL:"
    metadata = {
        "CATALOG_NAME": catalog, "DB_SCHEMA_NAME": schema, "TABLE_NAME": table,
        "TYPE_NAME": sql_type_name(field.type),
        "IS_AUTO_INCREMENT": "0", "IS_CASE_SENSITIVE": "1" if pa.types.is_string(field.type)
        else "0", "IS_READ_ONLY": "0", "IS_SEARCHABLE": "1",
    }
    if pa.types.is_decimal(field.type):
        metadata["PRECISION"] = str(field.type.precision)
        metadata["SCALE"] = str(field.type.scale)
    return {prefix + key: value for key, value in metadata.items()}
