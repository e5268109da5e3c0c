"""The one Catalog API every backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass

import pyarrow as pa

from catalog.errors import NamespaceNotFound, TableNotFound


@dataclass(frozen=True)
class TableIdent:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}.{self.name}"


@dataclass(frozen=True)
class TableScan:
    """What a reader needs to scan a table at one version.

    Either `data_files` (Parquet paths to read as they are) or `arrow` (rows already
    materialized, e.g. an in-memory table or an Iceberg snapshot with delete files).
    `version` changes whenever the table's contents change, so readers may cache by it.
    """

    ident: TableIdent
    schema: pa.Schema
    version: str
    data_files: tuple[str, ...] = ()
    arrow: pa.Table | None = None
    data_file_bytes: tuple[int, ...] = ()  # sizes of `data_files`, where known


class Catalog(ABC):
    """Namespaces holding tables of Arrow-typed rows."""

    @abstractmethod
    def list_namespaces(self) -> list[str]: ...

    @abstractmethod
    def create_namespace(self, namespace: str, properties: dict[str, str] | None = None) -> None:
        ...

    @abstractmethod
    def namespace_properties(self, namespace: str) -> dict[str, str]: ...

    @abstractmethod
    def drop_namespace(self, namespace: str) -> None: ...

    @abstractmethod
    def list_tables(self, namespace: str) -> list[str]: ...

    @abstractmethod
    def table_schema(self, ident: TableIdent) -> pa.Schema: ...

    @abstractmethod
    def scan(self, ident: TableIdent) -> TableScan: ...

    def scans(self, idents: Collection[TableIdent]) -> dict[TableIdent, TableScan]:
        """The scans of those of `idents` that are tables (a query's, looked up at once)."""
        found = {}
        for ident in idents:
            try:
                found[ident] = self.scan(ident)
            except (TableNotFound, NamespaceNotFound):
                continue
        return found

    @abstractmethod
    def create_table(self, ident: TableIdent, schema: pa.Schema) -> None: ...

    @abstractmethod
    def append(self, ident: TableIdent, rows: pa.Table) -> None: ...

    @abstractmethod
    def replace(self, ident: TableIdent, rows: pa.Table) -> None:
        """Make `rows` the table's whole content in one commit."""

    @abstractmethod
    def drop_table(self, ident: TableIdent) -> None: ...

    @abstractmethod
    def rename_table(self, ident: TableIdent, new_name: str) -> None:
        """Rename within the same namespace."""

    @abstractmethod
    def primary_key(self, ident: TableIdent) -> list[str]:
        """The table's key columns in order (Iceberg: its identifier fields)."""

    @abstractmethod
    def set_primary_key(self, ident: TableIdent, columns: list[str]) -> None:
        """Record `columns` (NOT NULL ones) as the table's key."""

    def create_table_with(self, ident: TableIdent, rows: pa.Table) -> None:
        """A new table holding `rows`; if writing them fails, no table is left behind."""
        self.create_table(ident, rows.schema)
        try:
            self.append(ident, rows)
        except BaseException:
            self.drop_table(ident)
            raise

    def namespace_exists(self, namespace: str) -> bool:
        return namespace in self.list_namespaces()

    def table_exists(self, ident: TableIdent) -> bool:
        return self.namespace_exists(ident.namespace) and ident.name in self.list_tables(
            ident.namespace
        )
