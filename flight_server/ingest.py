"""Bulk ingest: DoPut CommandStatementIngest (ADBC's `adbc_ingest`).

The upload is read completely, under a byte cap, before the catalog is touched, so a
rejected or broken upload leaves the target as it was; the write is then one commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pyarrow as pa

from catalog import InvalidData, TableIdent
from catalog.rows import fit_rows, same_but_offsets
from engine import Session
from engine.arrow_types import plain_schema, plain_type
from flight_server.errors import (
    AlreadyExistsError,
    InvalidArgument,
    NotFound,
    Unimplemented,
)
from flight_server.generated import FlightSql_pb2 as sql
from flight_server.ipc import PutStream

Options = sql.CommandStatementIngest.TableDefinitionOptions


def read_capped(upload: PutStream, max_bytes: int, is_cancelled: Callable[[], bool],
                types: Callable[[pa.Schema], pa.Schema]) -> pa.Table:
    """The upload, its columns cast to `types(its schema)` where they differ."""
    rows = upload.read_all(max_bytes, is_cancelled)
    schema = types(rows.schema)
    return rows if schema.equals(rows.schema) else rows.cast(schema)


def _storable_schema(schema: pa.Schema) -> pa.Schema:
    """Plain types, except that 64-bit string offsets (pandas', polars') stay: the Iceberg
    writer takes them as they are, and casting them copied every value."""
    return pa.schema([field if same_but_offsets(field.type, plain_type(field.type))
                      else field.with_type(plain_type(field.type)) for field in schema])


def ingest(
    session: Session,
    command: sql.CommandStatementIngest,
    upload: PutStream,
    max_bytes: int,
    is_cancelled: Callable[[], bool],
) -> int:
    """Write the upload to the target table as its options say; the rows written."""
    if command.HasField("transaction_id"):
        raise Unimplemented("transactions are not supported")
    for part in (command.table, command.schema if command.HasField("schema") else "x"):
        if not part or "." in part:
            raise InvalidArgument(f"invalid name {part!r}: names must be non-empty, no dots")
    if command.temporary:
        return _ingest_temporary(
            session, command, read_capped(upload, max_bytes, is_cancelled, plain_schema))
    catalog_name = session.engine.config.catalog_name
    if command.HasField("catalog") and command.catalog not in ("", catalog_name):
        raise NotFound(f"no catalog named {command.catalog}")
    namespace = command.schema if command.HasField("schema") else session.default_schema
    ident = TableIdent(namespace, command.table)
    rows = read_capped(upload, max_bytes, is_cancelled, _storable_schema)
    catalog = session.engine.catalog
    options = command.table_definition_options
    if not catalog.table_exists(ident):
        if options.if_not_exist != Options.TABLE_NOT_EXIST_OPTION_CREATE:
            raise NotFound(f"table {ident} does not exist")
        catalog.create_table_with(ident, rows)
        return rows.num_rows
    if options.if_exists == Options.TABLE_EXISTS_OPTION_APPEND:
        catalog.append(ident, rows)
    elif options.if_exists == Options.TABLE_EXISTS_OPTION_REPLACE:
        _replace(session, ident, rows)
    else:
        raise AlreadyExistsError(f"table {ident} already exists")
    return rows.num_rows


def _ingest_temporary(session: Session, command: sql.CommandStatementIngest,
                      rows: pa.Table) -> int:
    """Into the session's temporary tables (catalog and schema do not apply)."""
    tables = session.temporary
    options = command.table_definition_options
    current = tables.get(command.table)
    if current is None:
        if options.if_not_exist != Options.TABLE_NOT_EXIST_OPTION_CREATE:
            raise NotFound(f"temporary table {command.table} does not exist")
        tables[command.table] = rows
    elif options.if_exists == Options.TABLE_EXISTS_OPTION_APPEND:
        tables[command.table] = pa.concat_tables([current, fit_rows(rows, current.schema)])
    elif options.if_exists == Options.TABLE_EXISTS_OPTION_REPLACE:
        tables[command.table] = rows
    else:
        raise AlreadyExistsError(f"temporary table {command.table} already exists")
    return rows.num_rows


def _replace(session: Session, ident: TableIdent, rows: pa.Table) -> None:
    catalog = session.engine.catalog
    if catalog.table_schema(ident).names == rows.schema.names:
        try:
            catalog.replace(ident, rows)  # one atomic overwrite
            return
        except InvalidData:
            pass  # the rows need another schema
    # A new schema: build the new table aside, then swap it in; if building fails the
    # old table is untouched.
    aside = TableIdent(ident.namespace, f"krishiv_replace_{uuid.uuid4().hex}")
    catalog.create_table_with(aside, rows)
    catalog.drop_table(ident)
    catalog.rename_table(aside, ident.name)
