"""Catalog API with in-memory and Iceberg (pyiceberg) backends."""

from catalog.api import Catalog, TableIdent, TableScan
from catalog.errors import (
    AlreadyExists,
    CatalogError,
    CatalogUnavailable,
    InvalidData,
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
    "InvalidData",
    "NamespaceNotFound",
    "TableIdent",
    "TableNotFound",
    "TableScan",
]
