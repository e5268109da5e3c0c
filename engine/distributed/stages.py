"""The engine's side of stages on the coordinator: a query cut into stages over the files
of its tables' current snapshots (engine.distributed.stage_task runs one task of them)."""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Hashable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.dataset as ds
from datafusion import substrait as ds_substrait
from datafusion.catalog import Table
from datafusion.plan import LogicalPlan

from catalog import TableIdent
from engine.arrow_types import plain_schema
from engine.bridge import CatalogBridge, base_context, check_data_files
from engine.config import EngineConfig
from engine.distributed.ids import StageId
from engine.distributed.planner import PlanSchemas, StagePlan, TableFiles, plan_stages
from engine.errors import EngineError
from engine.parameters import bound_values
from engine.references import plans_alike, referenced_tables
from engine.session import READ_ONLY, SqlEngine
from engine.translate import translated_errors


class NotDistributable(EngineError):
    """The query runs as one task; the message says why (EXPLAIN shows it)."""


@dataclass(frozen=True)
class DistributedQuery:
    """A query resolved against its snapshots, ready to be cut into stages (again, in
    adaptive planning, as probe stages report their sizes)."""

    substrait: bytes
    config: EngineConfig
    tables: Callable[[list[str]], TableFiles]
    partitions: int
    broadcast_limit: int
    # The cut is deterministic: the plans made, by the probe sizes they were made with
    # (a probe over the same files writes the same bytes at every run, measured on TPC-H).
    _plans: dict[tuple[tuple[StageId, int], ...] | None, StagePlan] = field(
        default_factory=dict, compare=False, repr=False)
    # Schemas of the partial plans the cuts asked about, kept for the replans.
    _schemas: PlanSchemas = field(default_factory=dict, compare=False, repr=False)

    def plan(self, observed: dict[StageId, int] | None = None) -> StagePlan:
        """The stages; with `observed`, adaptively (see plan_stages)."""
        key = None if observed is None else tuple(sorted(observed.items()))
        made = self._plans.get(key)
        if made is not None:
            return made
        try:
            made = plan_stages(self.substrait, base_context(self.config), self.tables,
                               self.partitions, _empty_table, self.broadcast_limit, observed,
                               self._schemas)
        except NotDistributable:
            raise
        except Exception as exc:
            raise NotDistributable(f"the stage planner failed ({_first_line(exc)})") from None
        if len(self._plans) < _PLANS_KEPT:
            self._plans[key] = made
        return made


# Plans kept per query: its first, and its replans after each probe, for a few sizes.
_PLANS_KEPT = 16


_RESOLVED_KEPT = 256


class ResolvedQueries:
    """Queries resolved and cut before, by their text and their tables' snapshot files:
    a query repeated over unchanged tables skips SQL planning, Substrait and its first
    cut. Queries with parameters, that may read the clock, or that read anything but
    catalog tables are resolved each time."""

    def __init__(self) -> None:
        self._kept: OrderedDict[Hashable, DistributedQuery] = OrderedDict()
        self._lock = threading.Lock()

    def resolve(self, engine: SqlEngine, text: str, default_schema: str,
                parameters: pa.RecordBatch | None, partitions: int, broadcast_limit: int
                ) -> DistributedQuery:
        referenced = referenced_tables(text, default_schema)
        found = _snapshot_files(engine, referenced)
        if parameters is not None or not plans_alike(text, default_schema, found):
            return _resolve(engine, text, default_schema, parameters, partitions,
                            broadcast_limit, found)
        key = (text, default_schema, partitions, broadcast_limit, tuple(found.items()))
        with self._lock:
            kept = self._kept.get(key)
            if kept is not None:
                self._kept.move_to_end(key)
                return kept
        resolved = _resolve(engine, text, default_schema, None, partitions, broadcast_limit,
                            found)
        with self._lock:
            self._kept[key] = resolved
            while len(self._kept) > _RESOLVED_KEPT:
                self._kept.popitem(last=False)
        return resolved


def plan_distributed(engine: SqlEngine, text: str, default_schema: str,
                     parameters: pa.RecordBatch | None, partitions: int,
                     broadcast_limit: int = 0) -> StagePlan:
    """The query `text` cut into stages over the current snapshots of its tables, planned
    once from file sizes."""
    return resolve_distributed(engine, text, default_schema, parameters, partitions,
                               broadcast_limit).plan()


def resolve_distributed(engine: SqlEngine, text: str, default_schema: str,
                        parameters: pa.RecordBatch | None, partitions: int,
                        broadcast_limit: int = 0) -> DistributedQuery:
    """The query `text` over the current snapshots of its tables, as Substrait."""
    return _resolve(engine, text, default_schema, parameters, partitions, broadcast_limit,
                    _snapshot_files(engine, referenced_tables(text, default_schema)))


def _resolve(engine: SqlEngine, text: str, default_schema: str,
             parameters: pa.RecordBatch | None, partitions: int, broadcast_limit: int,
             found: dict[TableIdent, TableFiles]) -> DistributedQuery:
    config = engine.config
    ctx = base_context(config, (config.catalog_name, default_schema))
    resolved = {ident: _scan_table(engine, files) for ident, files in found.items()}
    ctx.register_catalog_provider(config.catalog_name, CatalogBridge(engine.tables, resolved))
    with translated_errors():
        frame = ctx.sql(text, options=READ_ONLY,
                        param_values=bound_values(parameters) or None)
        logical = frame.optimized_logical_plan()
    if any("null_aware" in node.display() for node in _nodes(logical)):
        # Substrait drops the flag (DESIGN §6): NOT IN must see NULLs of the whole input.
        raise NotDistributable("NOT IN over a nullable column needs its whole input")
    try:
        substrait = ds_substrait.Producer.to_substrait_plan(logical, ctx).encode()
    except Exception as exc:
        raise NotDistributable(f"the plan has no Substrait form ({_first_line(exc)})") from None

    def tables(names: list[str]) -> TableFiles:
        ident = TableIdent(names[-2] if len(names) > 1 else default_schema, names[-1])
        if ident not in found:
            raise NotDistributable(f"table {'.'.join(names)} was not resolved before planning")
        return found[ident]

    return DistributedQuery(substrait, config, tables, partitions, broadcast_limit)


# A planning table per schema, shared: making one costs 0.2 ms, and a cut makes one
# for every scan and exchange.
@functools.lru_cache(maxsize=256)
def _empty_table(schema: pa.Schema) -> Table:
    return Table(ds.dataset(schema.empty_table()))


def _snapshot_files(engine: SqlEngine, referenced: Collection[TableIdent]
                    ) -> dict[TableIdent, TableFiles]:
    found = {}
    for ident, scan in engine.catalog.scans(referenced).items():  # planning reports others
        if scan.arrow is not None and (scan.arrow.num_rows or scan.data_files):
            raise NotDistributable(f"table {ident} has row-level deletes")
        check_data_files(scan)
        size = sum(scan.data_file_bytes) if len(scan.data_file_bytes) == len(
            scan.data_files) else None
        found[ident] = TableFiles(str(ident), tuple(scan.data_files), plain_schema(scan.schema),
                                  size)
    return found


def _scan_table(engine: SqlEngine, files: TableFiles) -> Table:
    """A named table for planning only (its scan never runs here)."""
    if not files.files:
        return engine.tables.memory_table(files.schema.empty_table())
    return Table(ds.dataset(list(files.files), schema=files.schema, format="parquet"))


def _nodes(plan: LogicalPlan) -> list[LogicalPlan]:
    found = [plan]
    for child in plan.inputs():
        found.extend(_nodes(child))
    return found


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]
