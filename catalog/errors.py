"""Typed catalog errors; the server maps them to Flight status codes."""


class CatalogError(Exception):
    """Base of every error the catalog package raises."""


class NamespaceNotFound(CatalogError):
    pass


class TableNotFound(CatalogError):
    pass


class AlreadyExists(CatalogError):
    pass


class CatalogUnavailable(CatalogError):
    """The catalog backend (sqlite file, REST service) could not be reached."""


class InvalidData(CatalogError):
    """Rows that do not fit the table (types, NULL in a required column)."""
