"""Sessions plan client SQL with DataFusion over the catalog and stream results."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, replace
from typing import overload

import pyarrow as pa
from datafusion import DataFrame, ExecutionPlan, SessionContext, SQLOptions
from datafusion.catalog import Table
from datafusion.expr import EmptyRelation, Expr, Projection
from datafusion.plan import LogicalPlan

from catalog import Catalog, TableIdent
from engine.admission import Admission
from engine.arrow_types import ResultBatch, WireMessage, conform_batch, plain_schema, split_batch
from engine.bridge import CatalogBridge, TableCache, base_context
from engine.config import EngineConfig
from engine.dialects import DATAFUSION, to_datafusion
from engine.distributed.shuffle import MapOutput
from engine.distributed.stage_task import StageTask
from engine.parameters import bound_values, number_placeholders, parameter_schema
from engine.physical_plans import KeptPlans, ShippedPlan
from engine.plans import operators, unaliased
from engine.read_cache import ReadResults, plain_read
from engine.references import all_referenced_tables, plans_alike, referenced_tables
from engine.runner import StreamRunner, limits_check
from engine.statements import WriteStatement, classify
from engine.text_cache import KEPT_LENGTH, by_short_text
from engine.translate import translated_errors
from engine.workers import QueryWorkers
from engine.writes import COUNT_SCHEMA, Writer, count_rows

# Queries of written constants kept planned (SELECT 1 is planned at every prepare).
_MAX_CONSTANT_QUERIES = 256
# Client SQL may only query: DDL, DML and SET would reach files and runtime settings.
READ_ONLY = SQLOptions().with_allow_ddl(False).with_allow_dml(False).with_allow_statements(False)
# The parameters of a query that takes none: one object, so that its encoding is kept
# (flight_server.ipc) rather than made again at every prepare.
NO_COLUMNS = pa.schema([])


@dataclass
class PlannedQuery:
    """A query planned but not yet run (`frame`), and its rows when known at planning: a
    finished write's count (no frame), a query of written constants (whose frame a
    cluster still runs on its executors)."""

    sql: str
    schema: pa.Schema
    frame: DataFrame | None = None
    rows: pa.Table | None = None
    # What another process needs to plan the same query again (distributed runtime).
    text: str = ""
    default_schema: str = ""
    parameters: pa.RecordBatch | None = None
    # The context that planned `frame`, to make fresh frames of the same plan from.
    context: SessionContext | None = None
    # What every plan of this query is made of, when that is all (SqlEngine keeps
    # physical plans by it); None when a plan may differ from run to run.
    plan_key: Hashable | None = None


def planned_again(query: PlannedQuery) -> PlannedQuery:
    """`query` for one more run, without parsing and planning its SQL again: a fresh frame
    over its logical plan, from the context that planned it. A frame fixes now() when it
    is made, so each run needs its own; a query whose rows are known needs none."""
    if query.rows is not None:
        return query
    assert query.frame is not None and query.context is not None
    with translated_errors():
        frame = query.context.create_dataframe_from_logical_plan(query.frame.logical_plan())
    return replace(query, frame=frame)


def shippable_plan(plan: ExecutionPlan) -> bytes | None:
    """The physical plan as bytes for a query worker; None when it runs in this process.

    Only tables met first while planning are read through pyarrow datasets, whose scans
    do not serialize; nor do table functions (`generate_series`, `range`) survive it
    (their scans lose their projection: `count(*)` over one failed). Those queries run
    here, and a cancel stops them between batches only.
    """
    if any(name == "LazyMemoryExec" for name, _ in operators(plan)):
        return None
    try:
        return plan.to_bytes()
    except Exception as exc:
        if "PhysicalExtensionCodec" in str(exc):
            return None
        raise


# Operators that pass a scan's rows on without holding any: under these alone, bigger
# batches cost no more memory than one result message.
_PASS_THROUGH = frozenset({"DataSourceExec", "ProjectionExec", "FilterExec",
                           "CoalesceBatchesExec", "CoalescePartitionsExec"})
_VARIABLE_VALUE_BYTES = 32  # a guess for strings and nested values


def result_batch_rows(plan: ExecutionPlan, schema: pa.Schema, config: EngineConfig) -> int:
    """Rows per batch to run `plan` with. A plan that only passes a scan's rows on
    (`SELECT * FROM t`) reads batches that fill about one result message (up to four
    times the usual), which the worker then sends as they are instead of joining them:
    10M rows through ADBC came 7% faster (alternating A/B, faster in 11 rounds of 12).
    Anything else keeps the usual size: TPC-H with four times bigger batches everywhere
    ran slower (1.06 against 1.01 of DataFusion, one run each)."""
    if any(name not in _PASS_THROUGH for name, _ in operators(plan)):
        return config.batch_size
    row_bytes = sum(_value_bytes(field.type) for field in schema)
    fill = config.max_batch_bytes // max(row_bytes, 1)
    return max(config.batch_size, min(4 * config.batch_size, fill))


def _value_bytes(dtype: pa.DataType) -> int:
    try:
        return max(dtype.bit_width // 8, 1)
    except ValueError:  # not a fixed-width type
        return _VARIABLE_VALUE_BYTES


def one_row_of_values(frame: DataFrame) -> bool:
    """Whether the query only computes values over one placeholder row (`SELECT random()`;
    `SqlEngine.stream` answers constants before asking, see `constant_row`): it runs here
    at once, since a worker's round trip (about 0.7 ms) costs more. Read from the logical
    plan, which costs no physical planning: projections over one empty row, with no
    subquery (a subquery's plan shows as lines of its own)."""
    *projections, source = frame.logical_plan().display_indent().splitlines()
    return (source.strip() == "EmptyRelation: rows=1"
            and all(line.lstrip().startswith("Projection: ") for line in projections))


def written_constants(frame: DataFrame, schema: pa.Schema) -> pa.Table | None:
    """The one row of a query that projects literals as written over one placeholder row
    (`SELECT 1`, a connection pool's liveness check), the same at every run: made once,
    when the query is planned (folded ones, such as now(), belong to each run). None for
    anything else."""
    row = _row_of(_literals_over_one_row(frame.logical_plan()), schema)
    return None if row is None else pa.Table.from_batches([row])


def constant_row(frame: DataFrame, schema: pa.Schema) -> pa.RecordBatch | None:
    """The one row of a query that only projects constants over one placeholder row, read
    from its plan without running it: literals as written, else as the optimizer folds
    them. Cheaper than DataFusion's collect by a tenth of a millisecond in the server.
    None for anything else, which runs as usual; only plans of that shape as written are
    optimized here."""
    written = _literals_over_one_row(frame.logical_plan())
    if written is None:
        return None
    return _row_of(written or _literals_over_one_row(frame.optimized_logical_plan()), schema)


def _row_of(values: list[pa.Scalar] | None, schema: pa.Schema) -> pa.RecordBatch | None:
    if not values or len(values) != len(schema):
        return None
    row = pa.RecordBatch.from_arrays([pa.repeat(value, 1) for value in values],
                                     names=schema.names)
    return conform_batch(row, schema)


def _literals_over_one_row(plan: LogicalPlan) -> list[pa.Scalar] | None:
    """For a projection over one placeholder row, its values if all are literals, else
    an empty list; None for a plan of any other shape."""
    projection, inputs = plan.to_variant(), plan.inputs()
    if not (isinstance(projection, Projection) and len(inputs) == 1):
        return None
    source = inputs[0].to_variant()
    if not (isinstance(source, EmptyRelation) and source.produce_one_row()):
        return None
    values = [_literal(expr) for expr in projection.projections()]
    return [] if any(value is None for value in values) else values


def _literal(expr: Expr) -> pa.Scalar | None:
    expr = unaliased(expr)
    return expr.python_value() if expr.variant_name() == "Literal" else None


class SqlEngine:
    """Shared by all sessions: catalog, table cache, stream runner."""

    def __init__(self, catalog: Catalog, config: EngineConfig) -> None:
        self.catalog = catalog
        self.config = config
        self.read_results = ReadResults(config.read_cache_bytes)
        self.tables = TableCache(
            catalog, on_replaced=lambda folder: self.read_results.forget_reading(folder.name))
        self._runner = StreamRunner()
        self._workers = QueryWorkers(config)
        self._physical_plans = KeptPlans()
        self.admission = Admission(config.max_running_queries, config.max_queued_queries)
        self._table_free: dict[str, SessionContext] = {}
        self._constant_queries: dict[str, PlannedQuery] = {}
        self._constant_queries_lock = threading.Lock()

    def session(self, default_schema: str | None = None, dialect: str = DATAFUSION,
                temporary: dict[str, pa.Table] | None = None) -> Session:
        return Session(self, default_schema or self.config.default_schema, dialect, temporary)

    def resolve_tables(self, sql: str, default_schema: str
                       ) -> dict[TableIdent, tuple[int, Table]]:
        """The catalog tables `sql` names, each with the number of its build (DataFusion
        reports a name that is no table, as the user wrote it)."""
        scans = self.catalog.scans(referenced_tables(sql, default_schema))
        return {ident: self.tables.numbered_table(scan) for ident, scan in scans.items()}

    def new_context(
        self, default_schema: str, resolved: dict[TableIdent, Table] | None = None
    ) -> tuple[SessionContext, CatalogBridge]:
        ctx = base_context(self.config, (self.config.catalog_name, default_schema))
        bridge = CatalogBridge(self.tables, resolved or {})
        ctx.register_catalog_provider(self.config.catalog_name, bridge)
        return ctx, bridge

    def table_free_context(self, default_schema: str) -> SessionContext:
        """One context shared by the queries that name no table (`SELECT 1`, a pool's
        liveness check): making one costs more than planning such a query. Only without
        a memory limit, which a context's memory pool enforces per query."""
        ctx = self._table_free.get(default_schema)
        if ctx is None:
            ctx = self._table_free.setdefault(default_schema,
                                              self.new_context(default_schema)[0])
        return ctx

    def constant_query(self, text: str) -> PlannedQuery | None:
        """The kept plan of a query of written constants (`SELECT 1`, a connection pool's
        liveness check): planning it again costs a tenth of a millisecond and gives the
        same rows, whatever the session or the catalog."""
        return self._constant_queries.get(text)

    def keep_constant_query(self, query: PlannedQuery) -> None:
        if len(query.text) > KEPT_LENGTH:
            return
        with self._constant_queries_lock:
            if len(self._constant_queries) >= _MAX_CONSTANT_QUERIES:
                del self._constant_queries[next(iter(self._constant_queries))]
            self._constant_queries[query.text] = query

    @overload
    def stream(self, query: PlannedQuery, is_cancelled: Callable[[], bool]
               ) -> Iterator[pa.RecordBatch]: ...

    @overload
    def stream(self, query: PlannedQuery, is_cancelled: Callable[[], bool],
               wire: Callable[[pa.Buffer], WireMessage]) -> Iterator[ResultBatch]: ...

    def stream(
        self, query: PlannedQuery, is_cancelled: Callable[[], bool],
        wire: Callable[[pa.Buffer], WireMessage] | None = None,
    ) -> Iterator[ResultBatch]:
        """The query's result batches. With `wire` (for a client, not for computing on),
        batches from a query worker come as `wire` makes them of the IPC messages it sent,
        and the results of plain table reads are kept (engine.read_cache)."""
        if query.rows is not None:
            yield from query.rows.to_batches()
            return
        assert query.frame is not None
        with translated_errors():
            constant = constant_row(query.frame, query.schema)
        if constant is not None:
            yield constant
            return
        if one_row_of_values(query.frame):
            with self.admission.slot(is_cancelled, self.config.query_timeout_s):
                yield from self._one_row(query)
            return
        with self.admission.slot(is_cancelled, self.config.query_timeout_s):
            shipped = self._shipped(query)
            if shipped is None:
                yield from self._in_process(query, is_cancelled)
            else:
                yield from self._from_worker(query, shipped, is_cancelled, wire)

    def _shipped(self, query: PlannedQuery) -> ShippedPlan | None:
        """The query's physical plan for a query worker, planned now or kept from an
        earlier run of the same plan; None for a plan that runs in this process."""
        assert query.frame is not None
        if query.plan_key is not None:
            kept = self._physical_plans.get(query.plan_key)
            if kept is not None:
                return kept
        with translated_errors():
            plan = query.frame.execution_plan()
            shipped = shippable_plan(plan)
        if shipped is None:
            return None
        made = ShippedPlan(shipped, result_batch_rows(plan, query.schema, self.config),
                           plain_read(query.frame, plan))
        if query.plan_key is not None:
            self._physical_plans.keep(query.plan_key, made)
        return made

    def _from_worker(self, query: PlannedQuery, shipped: ShippedPlan,
                     is_cancelled: Callable[[], bool],
                     wire: Callable[[pa.Buffer], WireMessage] | None
                     ) -> Iterator[ResultBatch]:
        plan, batch_rows = shipped.plan, shipped.batch_rows
        if wire is None:
            yield from self._workers.batches(plan, query.schema, self.config.query_timeout_s,
                                             is_cancelled, batch_rows=batch_rows)
            return
        key = None
        if self.read_results.max_bytes and shipped.plain_read:
            key = ReadResults.key(plan, query.schema, batch_rows, wire.__qualname__)
            kept = self.read_results.get(key)
            if kept is not None:
                check = limits_check(self.config.query_timeout_s, is_cancelled)
                for message in kept:
                    check()
                    yield message
                return
        messages = (wire(message) for message in self._workers.batches(
            plan, query.schema, self.config.query_timeout_s, is_cancelled, encoded=True,
            batch_rows=batch_rows))
        yield from messages if key is None else self.read_results.keeping(key, plan, messages)

    def write_map_output(self, query: PlannedQuery, output: MapOutput,
                         is_cancelled: Callable[[], bool],
                         first_written: Callable[[], None]) -> dict[int, int]:
        """Run a map task's query and write its output partitions; rows per partition.

        In a worker, the worker writes the files: the rows never cross the pipe."""
        if query.rows is not None:
            return output.write(query.rows.to_batches(), query.schema, first_written)
        with self.admission.slot(is_cancelled, self.config.query_timeout_s):
            shipped = self._shipped(query)
            if shipped is not None:
                return self._workers.write_map_output(
                    shipped.plan, query.schema, output, self.config.query_timeout_s,
                    is_cancelled, first_written)
            return output.write(self._in_process(query, is_cancelled), query.schema,
                                first_written)

    def write_stage_output(self, task: StageTask, output: MapOutput,
                           is_cancelled: Callable[[], bool],
                           first_written: Callable[[], None]) -> dict[int, int]:
        """Run one task of a stage in a worker, which plans it over the task's files and
        writes its output partitions; rows per partition."""
        with self.admission.slot(is_cancelled, self.config.query_timeout_s):
            return self._workers.write_map_output(
                task.encode(), task.schema, output, self.config.query_timeout_s, is_cancelled,
                first_written, stage_task=True)

    @staticmethod
    def _one_row(query: PlannedQuery) -> Iterator[pa.RecordBatch]:
        assert query.frame is not None
        with translated_errors():
            batches = query.frame.collect()
        return (conform_batch(batch, query.schema) for batch in batches)

    def _in_process(self, query: PlannedQuery, is_cancelled: Callable[[], bool]
                    ) -> Iterator[pa.RecordBatch]:
        assert query.frame is not None
        return self._frame_batches(query.frame, query.schema, is_cancelled)

    def run_frame(self, frame: DataFrame, schema: pa.Schema, is_cancelled: Callable[[], bool]
                  ) -> Iterator[pa.RecordBatch]:
        """`frame`'s rows as `schema`, run in this process under the engine's admission,
        time limit and cancel checks (a coordinator's result stage)."""
        with self.admission.slot(is_cancelled, self.config.query_timeout_s):
            yield from self._frame_batches(frame, schema, is_cancelled)

    def _frame_batches(self, frame: DataFrame, schema: pa.Schema,
                       is_cancelled: Callable[[], bool]) -> Iterator[pa.RecordBatch]:
        batches = self._runner.batches(frame, self.config.query_timeout_s, is_cancelled)
        with translated_errors():
            for batch in batches:
                for piece in split_batch(batch, self.config.max_batch_bytes):
                    yield conform_batch(piece, schema)

    def close(self) -> None:
        self._workers.close()
        self._runner.close()
        self.tables.close()


# One execution asks for a statement's translation and kind up to five times (prepare:
# is it a write, which tables, plan; execute: are the tables unchanged), and clients
# repeat their statements: each costs a parse (0.2-0.5 ms for a TPC-H query).
@by_short_text(maxsize=1024)
def datafusion_text(sql: str, dialect: str) -> str:
    """Client SQL as DataFusion SQL with numbered placeholders."""
    return number_placeholders(to_datafusion(sql, dialect))


@by_short_text(maxsize=1024)
def _classified(text: str) -> WriteStatement | None:
    return classify(text)


class Session:
    """One client's view: a default schema, and a fresh DataFusion context per query.

    A context per query gives each query its own memory pool.
    """

    def __init__(self, engine: SqlEngine, default_schema: str, dialect: str = DATAFUSION,
                 temporary: dict[str, pa.Table] | None = None) -> None:
        self.engine = engine
        self.default_schema = default_schema
        self.dialect = dialect
        # The session's temporary tables, found by unqualified name before catalog tables.
        self.temporary: dict[str, pa.Table] = temporary if temporary is not None else {}

    def _translate(self, sql: str) -> str:
        return datafusion_text(sql, self.dialect)

    def write_statement(self, sql: str) -> WriteStatement | None:
        """The write `sql` is, or None for a query; writes run when planned."""
        text = self._translate(sql)
        with translated_errors():
            return _classified(text)

    def plan(self, sql: str, parameters: pa.RecordBatch | None = None) -> PlannedQuery:
        """A read-only query, planned and not run."""
        text = self._translate(sql)
        values = bound_values(parameters)
        constant = None if values else self.engine.constant_query(text)
        if constant is not None:
            return replace(constant, sql=sql, default_schema=self.default_schema,
                           parameters=parameters)
        ctx, builds, bridge = self._context_for(text)
        with translated_errors():
            frame = ctx.sql(text, options=READ_ONLY, param_values=values or None)
            schema = plain_schema(frame.schema())
            rows = written_constants(frame, schema)
        key = None
        if (not values and not self.temporary and bridge is not None
                and not bridge.looked_up_lazily
                and plans_alike(text, self.default_schema, builds)):
            key = (text, self.default_schema, frozenset(builds.items()))
        planned = PlannedQuery(sql=sql, schema=schema, frame=frame, rows=rows, text=text,
                               default_schema=self.default_schema, parameters=parameters,
                               context=ctx if self._contexts_shareable() else None,
                               plan_key=key)
        if rows is not None and not values and bridge is None:
            # Only plans of the shared table-free context: a session's own context holds
            # its temporary tables, which a kept frame would keep from being freed.
            self.engine.keep_constant_query(planned)
        return planned

    def execute(
        self,
        sql: str,
        parameters: pa.RecordBatch | None = None,
        is_cancelled: Callable[[], bool] = lambda: False,
    ) -> PlannedQuery:
        """Plan a query, or run a write now and return its row count as the result."""
        statement = self.write_statement(sql)
        if statement is None:
            return self.plan(sql, parameters)
        return PlannedQuery(sql=sql, schema=COUNT_SCHEMA,
                            rows=count_rows(self.write(statement, sql, parameters, is_cancelled)))

    def write(
        self,
        statement: WriteStatement,
        sql: str,
        parameters: pa.RecordBatch | None = None,
        is_cancelled: Callable[[], bool] = lambda: False,
    ) -> int:
        """Run a write statement; the number of rows it wrote."""
        return self.write_many(statement, sql, [parameters], is_cancelled)

    def write_many(
        self,
        statement: WriteStatement,
        sql: str,
        bindings: list[pa.RecordBatch | None],
        is_cancelled: Callable[[], bool] = lambda: False,
    ) -> int:
        """Run a write once per parameter row, committing all of it at once or nothing."""
        text = self._translate(sql)
        values: list[dict[str, object] | None] = [bound_values(b) for b in bindings]

        def collect(ctx: SessionContext, query: str | LogicalPlan,
                    query_values: dict[str, object] | None) -> pa.Table:
            with translated_errors():
                if isinstance(query, str):
                    frame = ctx.sql(query, options=READ_ONLY, param_values=query_values or None)
                else:
                    frame = ctx.create_dataframe_from_logical_plan(query)
                planned = PlannedQuery(sql=sql, schema=plain_schema(frame.schema()), frame=frame)
            batches = list(self.engine.stream(planned, is_cancelled))
            return pa.Table.from_batches(batches, schema=planned.schema)

        writer = Writer(self.engine.config.catalog_name, self.default_schema,
                        self.engine.catalog, lambda schema: self._context_for(text)[0], collect)
        with translated_errors():
            return writer.run(statement, text, values)

    def snapshot(self, sql: str) -> tuple[object, ...] | None:
        """What a plan of `sql` depends on besides its text and parameters: the versions of
        the catalog tables it names and the session's temporary tables. Plans made under
        equal snapshots read the same data; None when the tables cannot all be known."""
        idents = all_referenced_tables(self._translate(sql), self.default_schema)
        if idents is None:
            return None
        scans = self.engine.catalog.scans(idents)
        versions = [scans[ident].version if ident in scans else None
                    for ident in sorted(idents, key=str)]
        return self.default_schema, tuple(versions), tuple(
            (name, id(rows)) for name, rows in sorted(self.temporary.items()))

    @staticmethod
    def parameter_schema(query: PlannedQuery) -> pa.Schema:
        """The parameters a query planned without values takes."""
        if query.frame is None or "$" not in query.text:  # no placeholder: skip the walk
            return NO_COLUMNS
        with translated_errors():
            return parameter_schema(query.frame.logical_plan())

    def _contexts_shareable(self) -> bool:
        """Whether more runs than one may share a context: not under a memory limit,
        which a context's memory pool enforces per run."""
        return self.engine.config.memory_limit_bytes is None

    def _context_for(self, sql: str
                     ) -> tuple[SessionContext, dict[TableIdent, int], CatalogBridge | None]:
        """A context to plan `sql` in, the build of each catalog table resolved in it, and
        its catalog (None for the context shared by queries that name no table)."""
        if (not self.temporary and self._contexts_shareable()
                and all_referenced_tables(sql, self.default_schema) == frozenset()):
            return self.engine.table_free_context(self.default_schema), {}, None
        with translated_errors():
            numbered = self.engine.resolve_tables(sql, self.default_schema)
        resolved = {ident: table for ident, (_, table) in numbered.items()}
        for name, rows in self.temporary.items():
            resolved[TableIdent(self.default_schema, name)] = self.engine.tables.memory_table(rows)
        builds = {ident: build for ident, (build, _) in numbered.items()}
        ctx, bridge = self.engine.new_context(self.default_schema, resolved)
        return ctx, builds, bridge
