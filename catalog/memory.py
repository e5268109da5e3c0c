"""A catalog that keeps tables in process memory (tests, scratch servers)."""

from __future__ import annotations

import itertools
import threading

import pyarrow as pa

from catalog.api import Catalog, TableIdent, TableScan
from catalog.errors import AlreadyExists, InvalidData, NamespaceNotFound, TableNotFound
from catalog.rows import fit_rows


class InMemoryCatalog(Catalog):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._namespaces: dict[str, dict[str, str]] = {}
        self._tables: dict[TableIdent, tuple[int, pa.Table]] = {}
        self._keys: dict[TableIdent, list[str]] = {}
        # Versions from one counter: a table dropped and made again never reuses one.
        self._versions = itertools.count()

    def list_namespaces(self) -> list[str]:
        with self._lock:
            return sorted(self._namespaces)

    def create_namespace(self, namespace: str, properties: dict[str, str] | None = None) -> None:
        with self._lock:
            if namespace in self._namespaces:
                raise AlreadyExists(f"namespace {namespace!r} already exists")
            self._namespaces[namespace] = dict(properties or {})

    def namespace_properties(self, namespace: str) -> dict[str, str]:
        with self._lock:
            self._require_namespace(namespace)
            return dict(self._namespaces[namespace])

    def drop_namespace(self, namespace: str) -> None:
        with self._lock:
            self._require_namespace(namespace)
            if any(ident.namespace == namespace for ident in self._tables):
                raise AlreadyExists(f"namespace {namespace!r} is not empty")
            del self._namespaces[namespace]

    def list_tables(self, namespace: str) -> list[str]:
        with self._lock:
            self._require_namespace(namespace)
            return sorted(i.name for i in self._tables if i.namespace == namespace)

    def table_schema(self, ident: TableIdent) -> pa.Schema:
        return self._entry(ident)[1].schema

    def scan(self, ident: TableIdent) -> TableScan:
        version, rows = self._entry(ident)
        return TableScan(ident=ident, schema=rows.schema, version=str(version), arrow=rows)

    def create_table(self, ident: TableIdent, schema: pa.Schema) -> None:
        with self._lock:
            self._require_namespace(ident.namespace)
            if ident in self._tables:
                raise AlreadyExists(f"table {ident} already exists")
            self._tables[ident] = (next(self._versions), schema.empty_table())

    def append(self, ident: TableIdent, rows: pa.Table) -> None:
        with self._lock:
            _, current = self._tables_entry_locked(ident)
            combined = pa.concat_tables([current, fit_rows(rows, current.schema)])
            self._tables[ident] = (next(self._versions), combined)

    def replace(self, ident: TableIdent, rows: pa.Table) -> None:
        with self._lock:
            _, current = self._tables_entry_locked(ident)
            self._tables[ident] = (next(self._versions), fit_rows(rows, current.schema))

    def drop_table(self, ident: TableIdent) -> None:
        with self._lock:
            self._tables_entry_locked(ident)
            del self._tables[ident]
            self._keys.pop(ident, None)

    def rename_table(self, ident: TableIdent, new_name: str) -> None:
        with self._lock:
            entry = self._tables_entry_locked(ident)
            target = TableIdent(ident.namespace, new_name)
            if target in self._tables:
                raise AlreadyExists(f"table {target} already exists")
            self._tables[target] = entry
            del self._tables[ident]
            if ident in self._keys:
                self._keys[target] = self._keys.pop(ident)

    def primary_key(self, ident: TableIdent) -> list[str]:
        with self._lock:
            self._tables_entry_locked(ident)
            return list(self._keys.get(ident, []))

    def set_primary_key(self, ident: TableIdent, columns: list[str]) -> None:
        with self._lock:
            schema = self._tables_entry_locked(ident)[1].schema
            for name in columns:
                if schema.get_field_index(name) < 0 or schema.field(name).nullable:
                    raise InvalidData(f"key column {name} must be an existing NOT NULL column")
            self._keys[ident] = list(columns)

    def _entry(self, ident: TableIdent) -> tuple[int, pa.Table]:
        with self._lock:
            return self._tables_entry_locked(ident)

    def _tables_entry_locked(self, ident: TableIdent) -> tuple[int, pa.Table]:
        self._require_namespace(ident.namespace)
        try:
            return self._tables[ident]
        except KeyError:
            raise TableNotFound(f"table {ident} not found") from None

    def _require_namespace(self, namespace: str) -> None:
        if namespace not in self._namespaces:
            raise NamespaceNotFound(f"namespace {namespace!r} not found")
