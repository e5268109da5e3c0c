"""Both catalog backends through the engine: namespaces, tables, new snapshots seen."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from catalog import (
    AlreadyExists,
    Catalog,
    IcebergCatalog,
    InMemoryCatalog,
    NamespaceNotFound,
    TableIdent,
    TableNotFound,
)
from engine import EngineConfig, SqlEngine, references
from engine import session as session_module
from engine.arrow_types import conform_batch
from engine.bridge import base_context
from engine.errors import ObjectNotFound
from engine.session import constant_row, one_row_of_values, result_batch_rows
from flight_server import prepared
from flight_server.generated import FlightSql_pb2 as sql
from flight_server.prepared import PreparedStatements

ROWS = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "name": ["a", "b", "c"]})


@pytest.fixture(params=["memory", "iceberg"])
def catalog(request: pytest.FixtureRequest, tmp_path: Path) -> Catalog:
    if request.param == "memory":
        return InMemoryCatalog()
    return IcebergCatalog.embedded(str(tmp_path / "warehouse"))


@pytest.fixture()
def engine(catalog: Catalog) -> Iterator[SqlEngine]:
    catalog.create_namespace("public")
    sql_engine = SqlEngine(catalog, EngineConfig())
    yield sql_engine
    sql_engine.close()


def _rows(engine: SqlEngine, text: str) -> list[dict[str, object]]:
    query = engine.session().plan(text)
    batches = list(engine.stream(query, lambda: False))
    return pa.Table.from_batches(batches, query.schema).to_pylist()


def test_namespaces_and_tables(catalog: Catalog) -> None:
    catalog.create_namespace("sales", {"owner": "ops"})
    assert "sales" in catalog.list_namespaces()
    assert catalog.namespace_properties("sales")["owner"] == "ops"
    with pytest.raises(AlreadyExists):
        catalog.create_namespace("sales")
    ident = TableIdent("sales", "orders")
    catalog.create_table(ident, ROWS.schema)
    assert catalog.list_tables("sales") == ["orders"]
    assert catalog.table_schema(ident).names == ["id", "name"]
    with pytest.raises(TableNotFound):
        catalog.scan(TableIdent("sales", "missing"))
    with pytest.raises(NamespaceNotFound):
        catalog.list_tables("nowhere")
    catalog.drop_table(ident)
    catalog.drop_namespace("sales")
    assert "sales" not in catalog.list_namespaces()


def test_queries_see_each_new_version(engine: SqlEngine) -> None:
    ident = TableIdent("public", "items")
    engine.catalog.create_table(ident, ROWS.schema)
    assert _rows(engine, "SELECT count(*) AS n FROM items") == [{"n": 0}]
    engine.catalog.append(ident, ROWS)
    assert _rows(engine, "SELECT sum(id) AS s FROM public.items") == [{"s": 6}]
    engine.catalog.append(ident, ROWS)
    assert _rows(engine, "SELECT count(*) AS n, max(name) AS m FROM krishiv.public.items") == [
        {"n": 6, "m": "c"}
    ]


def test_unknown_table_is_typed(engine: SqlEngine) -> None:
    with pytest.raises(ObjectNotFound, match="nothing"):
        engine.session().plan("SELECT * FROM public.nothing")


def test_information_schema_lists_catalog_tables(engine: SqlEngine) -> None:
    engine.catalog.create_table(TableIdent("public", "items"), ROWS.schema)
    tables = _rows(engine, "SELECT table_catalog, table_schema, table_name "
                           "FROM information_schema.tables WHERE table_schema = 'public'")
    assert tables == [{"table_catalog": "krishiv", "table_schema": "public",
                       "table_name": "items"}]
    columns = _rows(engine, "SELECT column_name FROM information_schema.columns "
                            "WHERE table_name = 'items' ORDER BY ordinal_position")
    assert [c["column_name"] for c in columns] == ["id", "name"]


@pytest.mark.parametrize(("text", "one_row", "rows"), [
    ("SELECT 1 + 1", True, 1),
    ("SELECT 'a' || 'b' AS s, now() AS t, random() AS r", True, 1),
    ("SELECT * FROM (VALUES (1), (2)) AS v(a)", False, 2),
    ("SELECT 1 AS a UNION ALL SELECT 2", False, 2),
    ("SELECT count(*) FROM range(10)", False, 1),  # in process: see shippable_plan
    ("SELECT sum(value) FROM generate_series(1, 100000)", False, 1),
    ("SELECT id FROM items WHERE id > 1", False, 2),
    ("SELECT (SELECT count(*) FROM items) AS n", False, 1),
    ("SELECT 1 WHERE false", False, 0),
    ("SELECT 'a\nTableScan: items' || 'b' AS s", False, 1),  # a literal's lines: not trusted
])
def test_only_values_over_one_row_skip_the_worker(engine: SqlEngine, text: str,
                                                  one_row: bool, rows: int) -> None:
    """`SELECT 1` and the like run in the server (a worker's round trip would cost more
    than they do); anything that reads or generates rows goes to a worker, where a
    cancel or timeout can stop it."""
    ident = TableIdent("public", "items")
    engine.catalog.create_table(ident, ROWS.schema)
    engine.catalog.append(ident, ROWS)
    query = engine.session().plan(text)
    assert query.frame is not None
    assert one_row_of_values(query.frame) is one_row
    batches = list(engine.stream(query, lambda: False))
    assert sum(batch.num_rows for batch in batches) == rows
    assert all(batch.schema.equals(query.schema) for batch in batches)


@pytest.mark.parametrize(("text", "constant"), [
    ("SELECT 1", True),
    ("SELECT 1 AS a, 'b' AS b, 2.5 AS c, TRUE AS d, NULL AS e, X'01' AS f", True),
    ("SELECT NULL AS n, 'x' || 'y' AS s, CAST(2.25 AS DECIMAL(5,2)) AS d, TRUE AS b, "
     "DATE '2024-01-02' AS dt, TIMESTAMP '2024-01-02 03:04:05.123456789' AS ts, "
     "[1, 2] AS l, {'a': 'b'} AS st, X'01' AS bin, INTERVAL '1 month' AS i, "
     "arrow_cast('v', 'Utf8View') AS view, arrow_cast(1, 'Decimal32(5,2)') AS d32", True),
    ("SELECT version() AS v, 1 + 2 * 3 AS folded", True),
    ("SELECT random() AS r", False),
    ("SELECT (SELECT 1) AS s", False),
    ("SELECT 1 WHERE false", False),
    ("SELECT count(*) AS n FROM range(3)", False),
])
def test_constant_rows_come_from_the_plan_as_datafusion_computes_them(
        engine: SqlEngine, text: str, constant: bool) -> None:
    """A query of constants is answered from its plan without running it (literals as
    written: at planning; folded ones: at each run); the row must equal what DataFusion
    computes for the same query, types and values."""
    query = engine.session().plan(text)
    assert query.frame is not None
    if query.rows is not None:  # written constants: the row was made at planning
        assert constant
    else:
        assert (constant_row(query.frame, query.schema) is not None) is constant
    streamed = list(engine.stream(query, lambda: False))
    assert all(batch.schema.equals(query.schema) for batch in streamed)
    if "random" not in text:
        computed = base_context(engine.config).sql(text).collect()
        expected = [conform_batch(batch, query.schema) for batch in computed]
        assert pa.Table.from_batches(streamed, query.schema).equals(
            pa.Table.from_batches(expected, query.schema))


def test_written_constants_are_planned_as_their_row(engine: SqlEngine) -> None:
    """`SELECT 1` is the same at every run: its row is made once, at planning, and a
    prepared statement of it keeps that plan; folded constants stay plans, run each time."""
    session = engine.session()
    rows = session.plan("SELECT 1 AS one").rows
    assert rows is not None and rows.to_pylist() == [{"one": 1}]
    assert session.plan("SELECT 1 + 1 AS two").rows is None
    assert session.plan("SELECT now() AS t").rows is None
    statements = PreparedStatements(1 << 20)
    handle = statements.create(session, sql.ActionCreatePreparedStatementRequest(
        query="SELECT 1 AS one")).prepared_statement_handle
    assert statements._statements.get(handle).kept is not None
    for _ in range(2):
        query = statements.plan(sql.CommandPreparedStatementQuery(
            prepared_statement_handle=handle), lambda: False)
        assert [b.to_pylist() for b in engine.stream(query, lambda: False)] == [[{"one": 1}]]


def test_written_constants_are_planned_once_for_every_session(
        engine: SqlEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A query of written constants is planned once by the engine: any session planning
    the same DataFusion text again gets that plan, with its own statement and default
    schema; queries of other kinds, and the oldest past the limit, plan afresh."""
    monkeypatch.setattr(session_module, "_MAX_CONSTANT_QUERIES", 2)
    first = engine.session().plan("SELECT 1 AS one")
    again = engine.session("other", "mysql").plan("select 1 as one")
    assert again.frame is first.frame and again.rows is first.rows
    assert (again.sql, again.default_schema) == ("select 1 as one", "other")
    assert engine.session().plan("SELECT now() AS t").frame is not (
        engine.session().plan("SELECT now() AS t").frame)
    # A session with temporary tables plans in a context of its own, holding them: its
    # plan is not kept (a kept frame would keep those tables from being freed).
    temporary = engine.session(temporary={"t": pa.table({"a": [1]})})
    own = temporary.plan("SELECT 4 AS four")
    assert own.rows is not None and engine.session().plan("SELECT 4 AS four").frame is not (
        own.frame)
    assert temporary.plan("SELECT 1 AS one").frame is first.frame
    engine.session().plan("SELECT 2 AS two")
    engine.session().plan("SELECT 3 AS three")
    replanned = engine.session().plan("SELECT 1 AS one")
    assert replanned.frame is not first.frame
    assert replanned.rows is not None and replanned.rows.to_pylist() == [{"one": 1}]


def test_only_the_latest_prepared_statements_keep_their_plans(
        engine: SqlEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kept plan holds a DataFusion context, so only the most recently prepared
    statements keep theirs (and a closed one lets go); the others plan at each execution
    and answer the same."""
    monkeypatch.setattr(prepared, "_MAX_KEPT_PLANS", 2)
    statements = PreparedStatements(1 << 20)
    session = engine.session()
    handles = [statements.create(session, sql.ActionCreatePreparedStatementRequest(
        query=f"SELECT {n} + 0 AS n")).prepared_statement_handle for n in range(3)]
    kept = [statements._statements.get(handle).kept is not None for handle in handles]
    assert kept == [False, True, True]
    for n, handle in enumerate(handles):
        query = statements.plan(sql.CommandPreparedStatementQuery(
            prepared_statement_handle=handle), lambda: False)
        assert [b.to_pylist() for b in engine.stream(query, lambda: False)] == [[{"n": n}]]
    last = statements._statements.get(handles[-1])
    statements.close(sql.ActionClosePreparedStatementRequest(
        prepared_statement_handle=handles[-1]))
    assert last.kept is None


def test_plain_scans_read_batches_that_fill_a_result_message(engine: SqlEngine) -> None:
    """Only a plan that passes a scan's rows on reads bigger batches (up to four times the
    usual, as many rows as fill one result message by the schema's widths); joins,
    aggregations and sorts keep the usual size."""
    ident = TableIdent("public", "items")
    engine.catalog.create_table(ident, ROWS.schema)
    engine.catalog.append(ident, ROWS)
    config = engine.config

    def rows_for(text: str) -> int:
        query = engine.session().plan(text)
        assert query.frame is not None
        return result_batch_rows(query.frame.execution_plan(), query.schema, config)

    row_bytes = 8 + 32  # int64, and a string's guessed width
    assert rows_for("SELECT * FROM items") == min(4 * config.batch_size,
                                                   config.max_batch_bytes // row_bytes)
    assert rows_for("SELECT id FROM items WHERE id > 1") == min(
        4 * config.batch_size, config.max_batch_bytes // 8)
    for text in ("SELECT name, count(*) FROM items GROUP BY name",
                 "SELECT * FROM items ORDER BY id",
                 "SELECT a.id FROM items a JOIN items b ON a.id = b.id"):
        assert rows_for(text) == config.batch_size, text
    wide = ", ".join(f"name AS n{i}" for i in range(200))
    assert rows_for(f"SELECT {wide} FROM items") == config.batch_size


def test_big_ordered_results_come_back_whole_in_order(catalog: Catalog) -> None:
    """An ORDER BY's rows arrive in order, however many batches they fill: DataFusion
    would split a sorted result with string columns round robin over two partitions,
    which the worker then read in turn (out of order in every run of a 1.5M-row
    `ORDER BY` through ADBC before the fix).

    The result messages pass from the worker through three shared-memory slots, each
    freed once the server has taken its message; one bigger than a slot (a single row
    over it) goes through the pipe. Every row arrives intact, both as batches and as the
    IPC messages relayed to clients, though the slots are reused dozens of times."""
    catalog.create_namespace("public")
    ident = TableIdent("public", "wide")
    count = 200_000
    rows = pa.table({"id": pa.array(range(count), pa.int64()),
                     "text": pa.array([f"row-{i:08d}" + "x" * (i % 50) for i in range(count)])})
    huge = pa.table({"id": pa.array([count], pa.int64()), "text": ["y" * 600_000]})
    catalog.create_table(ident, rows.schema)
    catalog.append(ident, rows.slice(count // 2))  # files not in id order
    catalog.append(ident, huge)
    catalog.append(ident, rows.slice(0, count // 2))
    expected = pa.concat_tables([rows, huge])
    # 256 KiB batches: slots of 512 KiB, so the 600 KB row cannot take one.
    sql_engine = SqlEngine(catalog, EngineConfig(max_batch_bytes=256 << 10))
    try:
        text = "SELECT id, text FROM wide ORDER BY id"
        query = sql_engine.session().plan(text)
        batches = list(sql_engine.stream(query, lambda: False))
        assert len(batches) > 20
        assert pa.Table.from_batches(batches, query.schema).equals(expected)
        query = sql_engine.session().plan(text)
        messages = list(sql_engine.stream(query, lambda: False, wire=pa.Buffer.to_pybytes))
        decoded = [pa.ipc.read_record_batch(pa.py_buffer(m), query.schema) for m in messages]
        assert pa.Table.from_batches(decoded, query.schema).equals(expected)
    finally:
        sql_engine.close()


def test_only_queries_naming_no_table_share_a_context(catalog: Catalog) -> None:
    """A context costs more to make than `SELECT 1` costs to plan, so queries that name
    no table share one; queries over tables, sessions with temporary tables and engines
    with a per-query memory limit still get their own."""
    catalog.create_namespace("public")
    catalog.create_table(TableIdent("public", "items"), ROWS.schema)
    shared_engine = SqlEngine(catalog, EngineConfig())
    limited_engine = SqlEngine(catalog, EngineConfig(memory_limit_bytes=1 << 30))
    try:
        session = shared_engine.session()
        shared = shared_engine.table_free_context("public")
        assert session._context_for("SELECT 1")[0] is shared
        assert session._context_for("SELECT now(), random()")[0] is shared
        assert session._context_for("SELECT * FROM items")[0] is not shared
        temporary = shared_engine.session(temporary={"scratch": ROWS})
        assert temporary._context_for("SELECT 1")[0] is not shared
        limited = limited_engine.session()
        assert limited._context_for("SELECT 1")[0] is not limited._context_for("SELECT 1")[0]
        assert _rows(shared_engine, "SELECT 1 AS one") == [{"one": 1}]
    finally:
        shared_engine.close()
        limited_engine.close()


def test_physical_plans_are_kept_by_query_and_table_build(engine: SqlEngine) -> None:
    """A query planned again over the same builds of its tables runs the physical plan
    made at its first run; a new version of a table, the clock, parameters, a session's
    temporary tables and tables without versions plan afresh, and every answer is right."""
    ident = TableIdent("public", "items")
    engine.catalog.create_table(ident, ROWS.schema)
    engine.catalog.append(ident, ROWS)
    session = engine.session()
    text = "WITH t AS (SELECT id FROM items) SELECT sum(id) AS s FROM t"
    first = session.plan(text)
    assert first.plan_key is not None
    assert _rows(engine, text) == [{"s": 6}]
    kept = engine._physical_plans.get(first.plan_key)
    assert kept is not None
    assert session.plan(text).plan_key == first.plan_key
    assert _rows(engine, text) == [{"s": 6}]
    assert engine._physical_plans.get(first.plan_key) is kept
    engine.catalog.append(ident, ROWS)
    assert session.plan(text).plan_key != first.plan_key
    assert _rows(engine, text) == [{"s": 12}]
    unkept = [
        session.plan("SELECT count(*) AS n, now() AS t FROM items"),
        session.plan("SELECT id FROM items WHERE id = $1",
                     pa.record_batch([pa.array([2])], names=["$1"])),
        engine.session(temporary={"scratch": ROWS}).plan("SELECT * FROM items"),
        session.plan("SELECT table_name FROM information_schema.tables, items"),
    ]
    assert [query.plan_key for query in unkept] == [None] * len(unkept)


def test_scans_of_several_tables_at_once_are_current(catalog: Catalog, tmp_path: Path) -> None:
    """`scans` answers for the tables that exist, each at its current version, also after
    another writer (another catalog object over the same warehouse) changed one."""
    catalog.create_namespace("public")
    catalog.create_namespace("sales")
    items, orders = TableIdent("public", "items"), TableIdent("sales", "orders")
    for ident in (items, orders):
        catalog.create_table(ident, ROWS.schema)
    catalog.append(orders, ROWS)
    missing = [TableIdent("public", "nothing"), TableIdent("nowhere", "items")]
    first = catalog.scans([items, orders, *missing])
    assert set(first) == {items, orders}
    assert first[orders].version == catalog.scan(orders).version
    other = (IcebergCatalog.embedded(str(tmp_path / "warehouse"))
             if isinstance(catalog, IcebergCatalog) else catalog)
    other.append(items, ROWS)
    again = catalog.scans([items, orders])
    assert again[orders] == first[orders]
    assert again[items].version != first[items].version
    assert again[items].version == catalog.scan(items).version


def test_a_table_the_parser_missed_keeps_no_plan(engine: SqlEngine,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A table DataFusion had to look up itself while planning (the SQL parser did not
    see it, so its version is not in the plan's key) keeps the plan from being kept."""
    items, other = TableIdent("public", "items"), TableIdent("public", "other")
    for ident in (items, other):
        engine.catalog.create_table(ident, ROWS.schema)
        engine.catalog.append(ident, ROWS)

    def only_items(sql: str, default_schema: str) -> frozenset[TableIdent]:
        return frozenset({items})

    monkeypatch.setattr(session_module, "referenced_tables", only_items)
    monkeypatch.setattr(references, "all_referenced_tables", only_items)
    text = "SELECT count(*) AS n FROM items, other"
    assert engine.session().plan(text).plan_key is None
    assert _rows(engine, text) == [{"n": 9}]


def test_a_table_made_again_is_planned_with_its_new_columns(engine: SqlEngine) -> None:
    """Both catalogs give a table dropped and made again a version of its own, so the
    tables and plans kept for the first one are not used for it."""
    ident = TableIdent("public", "remade")
    engine.catalog.create_table(ident, ROWS.schema)
    assert _rows(engine, "SELECT * FROM remade") == []
    engine.catalog.drop_table(ident)
    engine.catalog.create_table(ident, pa.schema([("x", pa.int32())]))
    assert engine.session().plan("SELECT * FROM remade").schema.names == ["x"]
    engine.catalog.append(ident, pa.table({"x": pa.array([7], pa.int32())}))
    assert _rows(engine, "SELECT * FROM remade") == [{"x": 7}]
