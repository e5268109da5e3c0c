"""Catalog metadata commands: GetCatalogs, GetDbSchemas, GetTables, GetTableTypes, GetSqlInfo.

Result schemas follow the Flight SQL spec exactly; JDBC reads columns by name.
"""

from __future__ import annotations

import logging
import re

import pyarrow as pa

from catalog import NamespaceNotFound, TableIdent, TableNotFound
from engine import SqlEngine
from engine.arrow_types import plain_schema
from flight_server.generated import FlightSql_pb2 as sql
from flight_server.ipc import schema_bytes
from flight_server.sql_info import SCHEMA as SQL_INFO_SCHEMA
from flight_server.sql_info import sql_info_batch
from flight_server.type_info import SCHEMA as TYPE_INFO_SCHEMA
from flight_server.type_info import column_metadata, type_info

log = logging.getLogger("krishiv.metadata")

TABLE_TYPE = "TABLE"

CATALOGS_SCHEMA = pa.schema([pa.field("catalog_name", pa.string(), nullable=False)])
DB_SCHEMAS_SCHEMA = pa.schema(
    [pa.field("catalog_name", pa.string()), pa.field("db_schema_name", pa.string(), False)]
)
TABLES_SCHEMA = pa.schema(
    [
        pa.field("catalog_name", pa.string()),
        pa.field("db_schema_name", pa.string()),
        pa.field("table_name", pa.string(), False),
        pa.field("table_type", pa.string(), False),
    ]
)
TABLES_WITH_SCHEMA_SCHEMA = TABLES_SCHEMA.append(pa.field("table_schema", pa.binary(), False))
TABLE_TYPES_SCHEMA = pa.schema([pa.field("table_type", pa.string(), False)])
PRIMARY_KEYS_SCHEMA = pa.schema([
    pa.field("catalog_name", pa.string()),
    pa.field("db_schema_name", pa.string()),
    pa.field("table_name", pa.string(), False),
    pa.field("column_name", pa.string(), False),
    pa.field("key_name", pa.string()),
    pa.field("key_sequence", pa.int32(), False),
])
# Imported, exported keys and cross references share one schema.
FOREIGN_KEYS_SCHEMA = pa.schema([
    pa.field("pk_catalog_name", pa.string()),
    pa.field("pk_db_schema_name", pa.string()),
    pa.field("pk_table_name", pa.string(), False),
    pa.field("pk_column_name", pa.string(), False),
    pa.field("fk_catalog_name", pa.string()),
    pa.field("fk_db_schema_name", pa.string()),
    pa.field("fk_table_name", pa.string(), False),
    pa.field("fk_column_name", pa.string(), False),
    pa.field("key_sequence", pa.int32(), False),
    pa.field("fk_key_name", pa.string()),
    pa.field("pk_key_name", pa.string()),
    pa.field("update_rule", pa.uint8(), False),
    pa.field("delete_rule", pa.uint8(), False),
])
_FOREIGN_KEY_COMMANDS = (
    sql.CommandGetImportedKeys, sql.CommandGetExportedKeys, sql.CommandGetCrossReference
)


def like_matcher(pattern: str | None) -> re.Pattern[str] | None:
    """A regex for a SQL LIKE pattern (`%` any run, `_` one character, `\\` escapes)."""
    if pattern is None:
        return None
    parts: list[str] = []
    escaped = False
    for ch in pattern:
        if escaped:
            parts.append(re.escape(ch))
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "%":
            parts.append(".*")
        elif ch == "_":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


def _matches(matcher: re.Pattern[str] | None, value: str) -> bool:
    return matcher is None or matcher.fullmatch(value) is not None


class Metadata:
    def __init__(self, engine: SqlEngine, server_version: str) -> None:
        self._engine = engine
        self._catalog_name = engine.config.catalog_name
        self._server_version = server_version

    def schema_for(self, command: object) -> pa.Schema:
        if isinstance(command, sql.CommandGetSqlInfo):
            return SQL_INFO_SCHEMA
        if isinstance(command, sql.CommandGetCatalogs):
            return CATALOGS_SCHEMA
        if isinstance(command, sql.CommandGetDbSchemas):
            return DB_SCHEMAS_SCHEMA
        if isinstance(command, sql.CommandGetTables):
            return TABLES_WITH_SCHEMA_SCHEMA if command.include_schema else TABLES_SCHEMA
        if isinstance(command, sql.CommandGetTableTypes):
            return TABLE_TYPES_SCHEMA
        if isinstance(command, sql.CommandGetPrimaryKeys):
            return PRIMARY_KEYS_SCHEMA
        if isinstance(command, _FOREIGN_KEY_COMMANDS):
            return FOREIGN_KEYS_SCHEMA
        if isinstance(command, sql.CommandGetXdbcTypeInfo):
            return TYPE_INFO_SCHEMA
        raise TypeError(f"not a metadata command: {type(command).__name__}")

    def rows_for(self, command: object) -> pa.Table:
        if isinstance(command, sql.CommandGetSqlInfo):
            batch = sql_info_batch(command.info, self._server_version, read_only=False)
            return pa.Table.from_batches([batch], SQL_INFO_SCHEMA)
        if isinstance(command, sql.CommandGetCatalogs):
            return pa.table({"catalog_name": [self._catalog_name]}, schema=CATALOGS_SCHEMA)
        if isinstance(command, sql.CommandGetDbSchemas):
            return self._db_schemas(command)
        if isinstance(command, sql.CommandGetTables):
            return self._tables(command)
        if isinstance(command, sql.CommandGetTableTypes):
            return pa.table({"table_type": [TABLE_TYPE]}, schema=TABLE_TYPES_SCHEMA)
        if isinstance(command, sql.CommandGetPrimaryKeys):
            return self._primary_keys(command)
        if isinstance(command, _FOREIGN_KEY_COMMANDS):
            return FOREIGN_KEYS_SCHEMA.empty_table()  # Iceberg has no foreign keys
        if isinstance(command, sql.CommandGetXdbcTypeInfo):
            return type_info(command.data_type if command.HasField("data_type") else None)
        raise TypeError(f"not a metadata command: {type(command).__name__}")

    def _described(self, namespace: str, table: str) -> pa.Schema | None:
        """A table's schema with the column metadata JDBC shows (type names, precision)."""
        try:
            schema = plain_schema(self._engine.catalog.table_schema(TableIdent(namespace, table)))
        except Exception:
            log.warning("cannot read the schema of %s.%s", namespace, table, exc_info=True)
            return None
        return pa.schema([
            field.with_metadata(column_metadata(field, self._catalog_name, namespace, table))
            for field in schema
        ])

    def _primary_keys(self, command: sql.CommandGetPrimaryKeys) -> pa.Table:
        if command.HasField("catalog") and command.catalog != self._catalog_name:
            return PRIMARY_KEYS_SCHEMA.empty_table()
        namespace = (command.db_schema if command.HasField("db_schema")
                     else self._engine.config.default_schema)
        ident = TableIdent(namespace, command.table)
        try:
            columns = self._engine.catalog.primary_key(ident)
        except (TableNotFound, NamespaceNotFound):
            return PRIMARY_KEYS_SCHEMA.empty_table()
        return pa.table({
            "catalog_name": [self._catalog_name] * len(columns),
            "db_schema_name": [namespace] * len(columns),
            "table_name": [command.table] * len(columns),
            "column_name": columns,
            "key_name": [None] * len(columns),
            "key_sequence": list(range(1, len(columns) + 1)),
        }, schema=PRIMARY_KEYS_SCHEMA)

    def _catalog_matches(self, command: sql.CommandGetDbSchemas | sql.CommandGetTables) -> bool:
        return not command.HasField("catalog") or command.catalog == self._catalog_name

    def _namespaces(self, pattern: str | None) -> list[str]:
        matcher = like_matcher(pattern)
        return [ns for ns in self._engine.catalog.list_namespaces() if _matches(matcher, ns)]

    def _db_schemas(self, command: sql.CommandGetDbSchemas) -> pa.Table:
        pattern = (
            command.db_schema_filter_pattern
            if command.HasField("db_schema_filter_pattern") else None
        )
        names = self._namespaces(pattern) if self._catalog_matches(command) else []
        return pa.table(
            {"catalog_name": [self._catalog_name] * len(names), "db_schema_name": names},
            schema=DB_SCHEMAS_SCHEMA,
        )

    def _tables(self, command: sql.CommandGetTables) -> pa.Table:
        schema = TABLES_WITH_SCHEMA_SCHEMA if command.include_schema else TABLES_SCHEMA
        wanted_types = {t.upper() for t in command.table_types}
        if not self._catalog_matches(command) or (wanted_types and TABLE_TYPE not in wanted_types):
            return schema.empty_table()
        schema_pattern = (
            command.db_schema_filter_pattern
            if command.HasField("db_schema_filter_pattern") else None
        )
        table_matcher = like_matcher(
            command.table_name_filter_pattern
            if command.HasField("table_name_filter_pattern") else None
        )
        rows: list[tuple[str, str]] = []
        for namespace in self._namespaces(schema_pattern):
            try:
                names = self._engine.catalog.list_tables(namespace)
            except NamespaceNotFound:
                continue  # dropped while we listed
            rows += [(namespace, n) for n in names if _matches(table_matcher, n)]
        described: list[pa.Schema] = []
        if command.include_schema:
            found = [(ns, name, self._described(ns, name)) for ns, name in rows]
            # A table whose schema cannot be read must not hide every other table.
            rows = [(ns, name) for ns, name, table in found if table is not None]
            described = [table for _, _, table in found if table is not None]
        columns: dict[str, list[object]] = {
            "catalog_name": [self._catalog_name] * len(rows),
            "db_schema_name": [ns for ns, _ in rows],
            "table_name": [name for _, name in rows],
            "table_type": [TABLE_TYPE] * len(rows),
        }
        if command.include_schema:
            columns["table_schema"] = [schema_bytes(table) for table in described]
        return pa.table(columns, schema=schema)


METADATA_COMMANDS = (
    sql.CommandGetSqlInfo,
    sql.CommandGetCatalogs,
    sql.CommandGetDbSchemas,
    sql.CommandGetTables,
    sql.CommandGetTableTypes,
    sql.CommandGetPrimaryKeys,
    *_FOREIGN_KEY_COMMANDS,
    sql.CommandGetXdbcTypeInfo,
)
