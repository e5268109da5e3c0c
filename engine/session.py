"""Sessions plan client SQL with DataFusion over the catalog and stream results."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pyarrow as pa
from datafusion import DataFrame, RuntimeEnvBuilder, SessionConfig, SessionContext, SQLOptions
from datafusion.catalog import Table

from catalog import Catalog, CatalogError, NamespaceNotFound, TableIdent, TableNotFound
from engine.arrow_types import conform_batch, plain_schema, split_batch
from engine.bridge import DATAFUSION_SETTINGS, CatalogBridge, TableCache
from engine.config import EngineConfig
from engine.errors import (
    EngineError,
    InvalidQuery,
    NotAllowed,
    ObjectNotFound,
    ResourceExhausted,
)
from engine.parameters import bound_values, number_placeholders, parameter_schema
from engine.references import referenced_tables
from engine.runner import StreamRunner

# Client SQL may only query: DDL, DML and SET would reach files and runtime settings.
_READ_ONLY = SQLOptions().with_allow_ddl(False).with_allow_dml(False).with_allow_statements(False)


@dataclass
class PlannedQuery:
    """A planned, not yet executed, query and the schema its batches will have."""

    sql: str
    frame: DataFrame
    schema: pa.Schema


class SqlEngine:
    """Shared by all sessions: catalog, table cache, stream runner."""

    def __init__(self, catalog: Catalog, config: EngineConfig) -> None:
        self.catalog = catalog
        self.config = config
        self.tables = TableCache(catalog)
        self._runner = StreamRunner()

    def session(self, default_schema: str | None = None) -> Session:
        return Session(self, default_schema or self.config.default_schema)

    def resolve_tables(self, sql: str, default_schema: str) -> dict[TableIdent, Table]:
        resolved: dict[TableIdent, Table] = {}
        for ident in referenced_tables(sql, default_schema):
            try:
                resolved[ident] = self.tables.table(ident)
            except (TableNotFound, NamespaceNotFound):
                continue  # DataFusion reports it, with the name as the user wrote it
        return resolved

    def new_context(
        self, default_schema: str, resolved: dict[TableIdent, Table] | None = None
    ) -> SessionContext:
        settings = SessionConfig()
        for key, value in DATAFUSION_SETTINGS.items():
            settings = settings.set(key, value)
        settings = (
            settings.with_create_default_catalog_and_schema(False)
            .with_default_catalog_and_schema(self.config.catalog_name, default_schema)
            .with_information_schema(True)
            .with_target_partitions(self.config.target_partitions)
            .with_batch_size(self.config.batch_size)
        )
        runtime = RuntimeEnvBuilder().with_disk_manager_os()
        if self.config.memory_limit_bytes is not None:
            runtime = runtime.with_fair_spill_pool(self.config.memory_limit_bytes)
        ctx = SessionContext(settings, runtime)
        bridge = CatalogBridge(self.tables, resolved or {})
        ctx.register_catalog_provider(self.config.catalog_name, bridge)
        return ctx

    def stream(
        self, query: PlannedQuery, is_cancelled: Callable[[], bool]
    ) -> Iterator[pa.RecordBatch]:
        batches = self._runner.batches(query.frame, self.config.query_timeout_s, is_cancelled)
        with translated_errors():
            for batch in batches:
                for piece in split_batch(batch, self.config.max_batch_bytes):
                    yield conform_batch(piece, query.schema)

    def close(self) -> None:
        self._runner.close()


class Session:
    """One client's view: a default schema, and a fresh DataFusion context per query.

    A context per query gives each query its own memory pool.
    """

    def __init__(self, engine: SqlEngine, default_schema: str) -> None:
        self.engine = engine
        self.default_schema = default_schema

    def plan(self, sql: str, parameters: pa.RecordBatch | None = None) -> PlannedQuery:
        text = number_placeholders(sql)
        values = bound_values(parameters)
        ctx = self._context_for(text)
        with translated_errors():
            frame = ctx.sql(text, options=_READ_ONLY, param_values=values or None)
            schema = plain_schema(frame.schema())
        return PlannedQuery(sql=sql, frame=frame, schema=schema)

    def parameter_schema(self, sql: str) -> pa.Schema:
        text = number_placeholders(sql)
        ctx = self._context_for(text)
        with translated_errors():
            return parameter_schema(ctx.sql(text, options=_READ_ONLY).logical_plan())

    def _context_for(self, sql: str) -> SessionContext:
        with translated_errors():
            resolved = self.engine.resolve_tables(sql, self.default_schema)
        return self.engine.new_context(self.default_schema, resolved)


@contextmanager
def translated_errors() -> Iterator[None]:
    """Turn DataFusion and catalog exceptions into typed engine errors."""
    try:
        yield
    except EngineError:
        raise
    except (TableNotFound, NamespaceNotFound) as exc:
        raise ObjectNotFound(str(exc)) from None
    except CatalogError as exc:
        raise InvalidQuery(str(exc)) from None
    except Exception as exc:
        raise classify_datafusion_error(exc) from None


_PREFIXES = re.compile(
    r"^(DataFusion error: |Error during planning: |SQL error: |Execution error: |"
    r"Schema error: |Optimizer rule '[^']*' failed\s*(caused by)?\s*|Internal error: )+"
)


def one_line(message: str) -> str:
    text = " ".join(message.split())
    text = _PREFIXES.sub("", text)
    return text[:500]


def classify_datafusion_error(exc: Exception) -> EngineError:
    message = one_line(str(exc))
    lowered = message.lower()
    if "resources exhausted" in lowered or ("memory" in lowered and "exhaust" in lowered):
        return ResourceExhausted(f"query exceeded its memory limit: {message}")
    if re.search(r"(ddl|dml|statement) not supported", lowered):
        return NotAllowed(f"statement not allowed on this server: {message}")
    if re.search(r"table '.*' not found|no table named|schema '.*' (does not exist|not found)",
                 lowered):
        return ObjectNotFound(message)
    return InvalidQuery(message)
