"""Iceberg tables through pyiceberg: a SqlCatalog on sqlite by default, REST by URI."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import TypeVar
from urllib.parse import unquote, urlparse

import pyarrow as pa
from pyiceberg.catalog import Catalog as PyIcebergCatalog
from pyiceberg.catalog import load_catalog
from pyiceberg.catalog.sql import IcebergTables, SqlCatalog
from pyiceberg.exceptions import (
    NamespaceAlreadyExistsError,
    NamespaceNotEmptyError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.table import Table as IcebergTable
from sqlalchemy import bindparam, select

from catalog.api import Catalog, TableIdent, TableScan
from catalog.errors import AlreadyExists, InvalidData, NamespaceNotFound, TableNotFound
from catalog.rows import fit_rows_for_iceberg

T = TypeVar("T")

# The current metadata files of some tables (by namespaces and names, the pairs picked
# after), from a SqlCatalog's own table; built once (building a statement costs more
# than running it).
_METADATA_LOCATIONS = select(
    IcebergTables.table_namespace, IcebergTables.table_name, IcebergTables.metadata_location
).where(IcebergTables.catalog_name == bindparam("catalog"),
        IcebergTables.table_namespace.in_(bindparam("namespaces", expanding=True)),
        IcebergTables.table_name.in_(bindparam("names", expanding=True)))


@contextmanager
def _typed_errors() -> Iterator[None]:
    """Turn pyiceberg's exceptions into this package's typed errors."""
    try:
        yield
    except NoSuchTableError as exc:
        raise TableNotFound(_first_line(exc)) from None
    except NoSuchNamespaceError as exc:
        raise NamespaceNotFound(_first_line(exc)) from None
    except (NamespaceAlreadyExistsError, TableAlreadyExistsError, NamespaceNotEmptyError) as exc:
        raise AlreadyExists(_first_line(exc)) from None
    except (ValueError, TypeError) as exc:  # pyiceberg's word for data it cannot store
        raise InvalidData(_first_line(exc)) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def local_path(uri: str) -> str:
    """A file:// URI (or a bare path) as a local filesystem path."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return unquote(parsed.path) if parsed.scheme else uri
    return uri


class IcebergCatalog(Catalog):
    def __init__(self, backend: PyIcebergCatalog) -> None:
        self._backend = backend
        # Each table's last scan, by the metadata file it was read from: metadata files
        # never change, so a scan stays right until the table points at another one.
        self._scans: dict[TableIdent, tuple[str, TableScan]] = {}

    @classmethod
    def embedded(cls, warehouse: str, name: str = "krishiv") -> IcebergCatalog:
        """SqlCatalog on `<warehouse>/catalog.db`, data files under `<warehouse>`."""
        warehouse = os.path.abspath(warehouse)
        os.makedirs(warehouse, exist_ok=True)
        backend = load_catalog(
            name,
            type="sql",
            uri=f"sqlite:///{os.path.join(warehouse, 'catalog.db')}",
            warehouse=f"file://{warehouse}",
        )
        return cls(backend)

    @classmethod
    def rest(cls, uri: str, properties: dict[str, str], name: str = "krishiv") -> IcebergCatalog:
        return cls(load_catalog(name, type="rest", uri=uri, **properties))

    def list_namespaces(self) -> list[str]:
        return sorted(".".join(ns) for ns in self._backend.list_namespaces())

    def create_namespace(self, namespace: str, properties: dict[str, str] | None = None) -> None:
        with _typed_errors():
            self._backend.create_namespace(namespace, properties or {})

    def namespace_properties(self, namespace: str) -> dict[str, str]:
        with _typed_errors():
            return dict(self._backend.load_namespace_properties(namespace))

    def drop_namespace(self, namespace: str) -> None:
        with _typed_errors():
            self._backend.drop_namespace(namespace)

    def list_tables(self, namespace: str) -> list[str]:
        with _typed_errors():
            return sorted(ident[-1] for ident in self._backend.list_tables(namespace))

    def table_schema(self, ident: TableIdent) -> pa.Schema:
        return self._with_table(ident, lambda table: table.schema().as_arrow())

    def primary_key(self, ident: TableIdent) -> list[str]:
        schema = self._load(ident).schema()
        return [schema.find_column_name(i) or "" for i in schema.identifier_field_ids]

    def set_primary_key(self, ident: TableIdent, columns: list[str]) -> None:
        """Make `columns` the table's identifier fields (they must be NOT NULL)."""
        table = self._load(ident)
        with _typed_errors(), table.update_schema() as update:
            update.set_identifier_fields(*columns)

    def scan(self, ident: TableIdent) -> TableScan:
        locations = self._metadata_locations([ident])
        return self._scan_at(ident, None if locations is None else locations.get(ident))

    def scans(self, idents: Collection[TableIdent]) -> dict[TableIdent, TableScan]:
        """The scans of those of `idents` that are tables: with a SqlCatalog, one query
        tells which of the scans kept are current (a query per table cost 0.2-0.5 ms)."""
        locations = self._metadata_locations(idents)
        if locations is None:
            return super().scans(idents)
        found = {}
        for ident in idents:
            if ident not in locations:
                continue
            try:
                found[ident] = self._scan_at(ident, locations[ident])
            except (TableNotFound, NamespaceNotFound):
                continue  # dropped since
        return found

    def _scan_at(self, ident: TableIdent, location: str | None) -> TableScan:
        """The table's scan: the one kept if read from `location` (its current metadata
        file, where known), else read now."""
        cached = self._scans.get(ident)
        if cached is not None and cached[0] == location:
            return cached[1]
        table = self._load(ident)
        scan = _scan_of(ident, table)
        self._scans[ident] = (table.metadata_location, scan)
        return scan

    def _metadata_locations(self, idents: Collection[TableIdent]) -> dict[TableIdent, str] | None:
        """The tables' current metadata files, read cheaply where the backend allows (rows
        of sqlite, not metadata files): those of `idents` that exist. None where the
        backend does not allow it."""
        if not isinstance(self._backend, SqlCatalog):
            return None
        if not idents:
            return {}
        parameters = {"catalog": self._backend.name,
                      "namespaces": sorted({ident.namespace for ident in idents}),
                      "names": sorted({ident.name for ident in idents})}
        with self._backend.engine.connect() as connection:  # a third of an ORM session's cost
            rows = connection.execute(_METADATA_LOCATIONS, parameters).all()
        wanted = set(idents)
        return {ident: location for namespace, name, location in rows
                if location is not None and (ident := TableIdent(namespace, name)) in wanted}

    def create_table(self, ident: TableIdent, schema: pa.Schema) -> None:
        with _typed_errors():
            self._backend.create_table((ident.namespace, ident.name),
                                       schema=iceberg_arrow_schema(schema))

    def append(self, ident: TableIdent, rows: pa.Table) -> None:
        """One atomic snapshot with `rows`, cast to the table's schema."""
        table = self._load(ident)
        target = table.schema().as_arrow()
        fitted = fit_rows_for_iceberg(rows, target)
        with _typed_errors():
            table.append(fitted)

    def replace(self, ident: TableIdent, rows: pa.Table) -> None:
        """One atomic overwrite snapshot with `rows`, cast to the table's schema."""
        table = self._load(ident)
        fitted = fit_rows_for_iceberg(rows, table.schema().as_arrow())
        with _typed_errors():
            table.overwrite(fitted)

    def drop_table(self, ident: TableIdent) -> None:
        with _typed_errors():
            self._backend.drop_table((ident.namespace, ident.name))

    def rename_table(self, ident: TableIdent, new_name: str) -> None:
        with _typed_errors():
            self._backend.rename_table((ident.namespace, ident.name), (ident.namespace, new_name))

    def _load(self, ident: TableIdent) -> IcebergTable:
        with _typed_errors():
            return self._backend.load_table((ident.namespace, ident.name))

    def _with_table(self, ident: TableIdent, action: Callable[[IcebergTable], T]) -> T:
        table = self._load(ident)
        with _typed_errors():
            return action(table)


def _scan_of(ident: TableIdent, table: IcebergTable) -> TableScan:
    """What reading `table` at its current snapshot takes: files, or rows already read."""
    schema = table.schema().as_arrow()
    snapshot = table.current_snapshot()
    # The table's identity and schema are part of its version: a table dropped and made
    # again, or given a new schema, has new contents even with no snapshot or the same one.
    version = (f"{table.metadata.table_uuid}:{table.metadata.current_schema_id}:"
               f"{snapshot.snapshot_id if snapshot is not None else 'empty'}")
    if snapshot is None:
        return TableScan(ident, schema, version, arrow=schema.empty_table())
    tasks = list(table.scan().plan_files())
    if any(task.delete_files for task in tasks):
        # Only pyiceberg's reader applies delete files; never return deleted rows.
        return TableScan(ident, schema, version, arrow=table.scan().to_arrow())
    files = tuple(local_path(task.file.file_path) for task in tasks)
    sizes = tuple(int(task.file.file_size_in_bytes) for task in tasks)
    return TableScan(ident, schema, version, data_files=files, data_file_bytes=sizes)


def _iceberg_type(dtype: pa.DataType) -> pa.DataType:
    """The nearest Arrow type Iceberg stores (it has no 8/16-bit ints, unsigned, ns time)."""
    if pa.types.is_int8(dtype) or pa.types.is_int16(dtype) or pa.types.is_uint8(dtype) or (
        pa.types.is_uint16(dtype)
    ):
        return pa.int32()
    if pa.types.is_uint32(dtype) or pa.types.is_uint64(dtype):
        return pa.int64()
    if pa.types.is_float16(dtype):
        return pa.float32()
    if pa.types.is_timestamp(dtype):
        return pa.timestamp("us", tz=dtype.tz)
    if pa.types.is_time(dtype):
        return pa.time64("us")
    if pa.types.is_date64(dtype):
        return pa.date32()
    if pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
        return pa.string()
    if pa.types.is_large_binary(dtype) or pa.types.is_binary_view(dtype):
        return pa.binary()
    return dtype


def iceberg_arrow_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field(f.name, _iceberg_type(f.type), f.nullable) for f in schema])
