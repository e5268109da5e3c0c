"""The catalog as DataFusion sees it: schemas are namespaces, tables are scans."""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
from datafusion import DataFrame, RuntimeEnvBuilder, SessionConfig, SessionContext
from datafusion.catalog import CatalogProvider, SchemaProvider, Table

from catalog import Catalog, NamespaceNotFound, TableIdent, TableNotFound, TableScan
from engine.arrow_types import plain_schema, scan_schema
from engine.config import EngineConfig
from engine.errors import DataUnavailable

# Shared settings for every DataFusion context the engine makes.
DATAFUSION_SETTINGS = {
    "datafusion.execution.parquet.schema_force_view_types": "false",
    "datafusion.sql_parser.map_string_types_to_utf8view": "false",
    "datafusion.optimizer.expand_views_at_output": "true",
    # With it on, DataFusion 55 splits an ORDER BY's merged output round robin into two
    # partitions to cast the views back in parallel, and readers of both partitions get
    # the rows out of order. Off, TPC-H SF 1 in process ran as fast (geomean 0.996).
    "datafusion.optimizer.enable_round_robin_repartition": "false",
}


def base_context(config: EngineConfig, catalog_schema: tuple[str, str] | None = None
                 ) -> SessionContext:
    """A context with the engine's settings and a memory pool of its own.

    With `catalog_schema`, names resolve in that catalog and schema, which the caller
    registers; without, the context only runs plans (as query workers do).
    """
    settings = SessionConfig()
    for key, value in DATAFUSION_SETTINGS.items():
        settings = settings.set(key, value)
    settings = settings.with_target_partitions(config.target_partitions).with_batch_size(
        config.batch_size)
    if catalog_schema is not None:
        settings = (settings.with_create_default_catalog_and_schema(False)
                    .with_default_catalog_and_schema(*catalog_schema)
                    .with_information_schema(True))
    runtime = RuntimeEnvBuilder().with_disk_manager_os()
    if config.memory_limit_bytes is not None:
        runtime = runtime.with_fair_spill_pool(config.memory_limit_bytes)
    return SessionContext(settings, runtime)


_LINKS_PREFIX = "krishiv-tables-"


def remove_orphan_links(folder: Path) -> None:
    """Remove link folders whose process is gone: one killed outright never cleans up."""
    for path in folder.glob(f"{_LINKS_PREFIX}*-*"):
        pid = path.name[len(_LINKS_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_links(folder: Path, targets: list[Path]) -> None:
    """Links to `targets` in `folder`, named in their order, for DataFusion to read the
    folder as one listing table (of `.parquet` files)."""
    for number, target in enumerate(targets):
        (folder / f"{number:06d}.parquet").symlink_to(target)


class _FileLinks:
    """A folder of links per table version to exactly its data files, which DataFusion
    reads as one listing table: faster plans than a union of one scan per file (measured
    on TPC-H SF 1: q5 0.29 s against 0.37 s, q12 0.25 against 0.32, q8 0.25 against 0.32).

    A replaced version's folder stays for `grace_s`, for queries still reading it.
    """

    def __init__(self, grace_s: float = 3600.0) -> None:
        remove_orphan_links(Path(tempfile.gettempdir()))
        self.root = Path(tempfile.mkdtemp(prefix=f"{_LINKS_PREFIX}{os.getpid()}-"))
        self._grace_s = grace_s
        self._retired: list[tuple[float, Path]] = []

    def folder(self, scan: TableScan) -> Path:
        folder = self.root / uuid.uuid4().hex
        folder.mkdir()
        write_links(folder, [Path(os.path.abspath(path)) for path in scan.data_files])
        return folder

    def retire(self, folder: Path) -> None:
        now = time.monotonic()
        self._retired.append((now, folder))
        while self._retired and now - self._retired[0][0] > self._grace_s:
            shutil.rmtree(self._retired.pop(0)[1], ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class TableCache:
    """DataFusion tables built once per table version, shared by all sessions."""

    def __init__(self, catalog: Catalog, on_replaced: Callable[[Path], None]) -> None:
        """`on_replaced` hears of each replaced version's folder of file links."""
        self.catalog = catalog
        self._on_replaced = on_replaced
        self._lock = threading.Lock()
        # Per table: the version built, the build's number, the table.
        self._tables: dict[TableIdent, tuple[str, int, Table]] = {}
        self._builds = itertools.count()
        self._folders: dict[TableIdent, Path] = {}
        self._links = _FileLinks()
        config = SessionConfig()
        for key, value in DATAFUSION_SETTINGS.items():
            config = config.set(key, value)
        self._reader = SessionContext(config)

    def numbered_table(self, scan: TableScan) -> tuple[int, Table]:
        """The table at the version `scan` reads, by DataFusion's own Parquet scan, and
        the number of the build that made it (no two builds share one): physical plans
        over one build read the same files.

        Must not be called while DataFusion plans (from a provider callback): building
        a Parquet scan starts DataFusion's runtime, which cannot nest.
        """
        ident = scan.ident
        check_data_files(scan)
        built = self._built(scan)
        if built is not None:
            return built
        table, folder = self._build(scan)
        build = next(self._builds)
        with self._lock:
            self._tables[ident] = (scan.version, build, table)
            replaced = self._folders.pop(ident, None)
            if folder is not None:
                self._folders[ident] = folder
            if replaced is not None:
                self._links.retire(replaced)
                self._on_replaced(replaced)
        return build, table

    def table_while_planning(self, ident: TableIdent) -> Table:
        """The table for a provider callback: cached, or else a pyarrow dataset scan."""
        scan = self.catalog.scan(ident)
        built = self._built(scan)
        if built is not None:
            return built[1]
        schema = plain_schema(scan.schema)
        if scan.arrow is not None:
            return Table(ds.dataset(scan.arrow.cast(schema)))
        return Table(ds.dataset(list(scan.data_files), schema=schema, format="parquet"))

    def _built(self, scan: TableScan) -> tuple[int, Table] | None:
        """The build kept for the version `scan` reads, and its number, if there is one."""
        with self._lock:
            kept = self._tables.get(scan.ident)
        return kept[1:] if kept is not None and kept[0] == scan.version else None

    def memory_table(self, rows: pa.Table) -> Table:
        """`rows` as a table whose scans ship with a plan (a pyarrow dataset's do not)."""
        return Table(self._reader.from_arrow(rows))

    def _build(self, scan: TableScan) -> tuple[Table, Path | None]:
        """The table, and the folder of file links it reads (None if it reads none)."""
        schema = plain_schema(scan.schema)
        if scan.arrow is not None or not scan.data_files:
            rows = scan.arrow if scan.arrow is not None else scan.schema.empty_table()
            return self.memory_table(rows.cast(schema)), None
        if not all(os.path.isfile(path) for path in scan.data_files):
            # Not local files (an object store): one scan per file, as DataFusion allows.
            frames = [self._reader.read_parquet(path, schema=scan_schema(schema))
                      for path in scan.data_files]
            return Table(functools.reduce(DataFrame.union, frames)), None
        folder = self._links.folder(scan)
        return Table(self._reader.read_parquet(str(folder), schema=scan_schema(schema))), folder

    def close(self) -> None:
        self._links.close()


def check_data_files(scan: TableScan) -> None:
    """Every local data file of the version must be there: DataFusion's listing of a
    folder of links skips a dangling one and would answer with its rows missing."""
    for path in scan.data_files:
        if "://" not in path and not os.path.isfile(path):
            raise DataUnavailable(f"cannot read table {scan.ident}: its data file {path} "
                                  "is missing")


class _NamespaceSchema(SchemaProvider):
    def __init__(
        self, bridge: CatalogBridge, tables: TableCache, namespace: str,
        resolved: dict[TableIdent, Table]
    ) -> None:
        self._bridge = bridge
        self._tables = tables
        self._namespace = namespace
        self._resolved = resolved

    # datafusion-python reads `table_names` as an attribute holding a list, not a call.
    @property
    def table_names(self) -> list[str]:  # type: ignore[override]
        return sorted(self._tables.catalog.list_tables(self._namespace))

    def table(self, name: str) -> Table | None:
        ident = TableIdent(self._namespace, name)
        resolved = self._resolved.get(ident)
        if resolved is not None:
            return resolved
        self._bridge.looked_up_lazily = True
        try:
            return self._tables.table_while_planning(ident)
        except (TableNotFound, NamespaceNotFound):
            return None

    def table_exist(self, name: str) -> bool:
        return self._tables.catalog.table_exists(TableIdent(self._namespace, name))


class CatalogBridge(CatalogProvider):
    """One query's catalog: tables resolved before planning, others looked up lazily
    (then `looked_up_lazily` says so: a plan of such tables is not known by its builds)."""

    def __init__(self, tables: TableCache, resolved: dict[TableIdent, Table]) -> None:
        self._tables = tables
        self._resolved = resolved
        self.looked_up_lazily = False

    def schema_names(self) -> set[str]:
        return set(self._tables.catalog.list_namespaces())

    def schema(self, name: str) -> _NamespaceSchema | None:  # type: ignore[override]
        # A namespace holding a resolved table exists; asking the catalog costs a query.
        known = any(ident.namespace == name for ident in self._resolved)
        if not known and not self._tables.catalog.namespace_exists(name):
            return None
        return _NamespaceSchema(self, self._tables, name, self._resolved)
