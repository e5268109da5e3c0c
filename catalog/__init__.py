"""Catalog API with in-memory and Iceberg (pyiceberg) backends."""

from catalog.api import Catalog, TableIdent, TableScan
from catalog.errors import (
    AlreadyExists,
    CatalogError,
    CatalogUnavailable,
    NamespaceNotFound,
    TableNotFound,
)
from catalog.iceberg import IcebergCatalog
from catalog.memory import InMemoryCatalog

__all__ = [
    "AlreadyExists",
    "Catalog",
    "CatalogError",
    "CatalogUnavailable",
    "IcebergCatalog",
    "InMemoryCatalog",
    "NamespaceNotFound",
    "TableIdent",
    "TableNotFound",
    "TableScan",
]
