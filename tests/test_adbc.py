"""The real ADBC Flight SQL driver against a running server."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import pyarrow as pa
import pytest

from tests.conftest import adbc_connect
from tests.servers import RunningServer


def test_simple_query(conn: flightsql.Connection) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) AS n FROM tpch.nation")
        assert cur.fetchall() == [(25,)]


def test_information_schema_lists_catalog_tables(conn: flightsql.Connection) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = 'tpch' ORDER BY table_name")
        assert [r[0] for r in cur.fetchall()] == sorted(
            ["customer", "lineitem", "nation", "orders", "part", "partsupp", "region",
             "supplier"])
        cur.execute("SELECT column_name FROM information_schema.columns "
                    "WHERE table_schema = 'tpch' AND table_name = 'region' "
                    "ORDER BY ordinal_position")
        assert [r[0] for r in cur.fetchall()] == ["r_regionkey", "r_name", "r_comment"]


def test_result_types_are_plain(conn: flightsql.Connection) -> None:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT n_name, n_nationkey, r_name FROM tpch.nation JOIN tpch.region "
            "ON n_regionkey = r_regionkey ORDER BY n_nationkey LIMIT 3"
        )
        table = cur.fetch_arrow_table()
    assert table.schema.field("n_name").type == pa.string()
    assert table.schema.field("n_nationkey").type == pa.int64()
    assert table.column("n_name").to_pylist() == ["ALGERIA", "ARGENTINA", "BRAZIL"]
    assert table.column("r_name").to_pylist() == ["AFRICA", "AMERICA", "AMERICA"]


def test_decimal_and_date_columns(conn: flightsql.Connection) -> None:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT o_totalprice, o_orderdate FROM tpch.orders ORDER BY o_orderkey LIMIT 1"
        )
        table = cur.fetch_arrow_table()
    assert pa.types.is_decimal128(table.schema.field("o_totalprice").type)
    assert table.schema.field("o_orderdate").type == pa.date32()


@pytest.mark.parametrize(
    ("sql", "params", "expected"),
    [
        ("SELECT n_name FROM tpch.nation WHERE n_nationkey = ?", (7,), [("GERMANY",)]),
        ("SELECT count(*) FROM tpch.nation WHERE n_name LIKE ? AND n_regionkey = ?",
         ("%A%", 0), [(4,)]),
        ("SELECT ? + 1 AS x", (41,), [(42,)]),
        ("SELECT n_name FROM tpch.nation WHERE n_name = ? -- why?\n", ("FRANCE",), [("FRANCE",)]),
        ("SELECT 'is it?' AS q, n_nationkey FROM tpch.nation WHERE n_nationkey = ?", (1,),
         [("is it?", 1)]),
    ],
)
def test_bound_parameters(
    conn: flightsql.Connection,
    sql: str,
    params: tuple[object, ...],
    expected: list[tuple[object, ...]],
) -> None:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        assert cur.fetchall() == expected


def test_prepared_statement_reused_with_new_parameters(conn: flightsql.Connection) -> None:
    with conn.cursor() as cur:
        names = []
        for key in (0, 1, 2):
            cur.execute("SELECT n_name FROM tpch.nation WHERE n_nationkey = ?", (key,))
            names.append(cur.fetchone()[0])
    assert names == ["ALGERIA", "ARGENTINA", "BRAZIL"]


def test_large_result_streams_in_small_batches(conn: flightsql.Connection) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM tpch.lineitem")
        reader = cur.fetch_record_batch()
        rows = 0
        for batch in reader:
            assert batch.nbytes <= 5 * 1024 * 1024
            rows += batch.num_rows
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM tpch.lineitem")
        assert cur.fetchone()[0] == rows


def test_get_info(conn: flightsql.Connection) -> None:
    info = conn.adbc_get_info()
    assert info["vendor_name"] == "Krishiv"
    assert info["vendor_version"] == version("krishiv")
    assert info["vendor_arrow_version"] == pa.__version__


def test_get_objects_lists_catalog_schemas_and_tables(conn: flightsql.Connection) -> None:
    objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
    assert [o["catalog_name"] for o in objects] == ["krishiv"]
    schemas = {s["db_schema_name"]: s for s in objects[0]["catalog_db_schemas"]}
    assert {"tpch", "public"} <= set(schemas)
    tables = {t["table_name"] for t in schemas["tpch"]["db_schema_tables"]}
    assert tables == {"nation", "region", "part", "supplier", "partsupp", "customer", "orders",
                      "lineitem"}


def test_get_objects_with_columns_and_filters(conn: flightsql.Connection) -> None:
    objects = conn.adbc_get_objects(
        depth="all", db_schema_filter="tp%", table_name_filter="na_ion"
    ).read_all().to_pylist()
    schemas = objects[0]["catalog_db_schemas"]
    assert [s["db_schema_name"] for s in schemas] == ["tpch"]
    (table,) = schemas[0]["db_schema_tables"]
    assert table["table_name"] == "nation"
    columns = [c["column_name"] for c in table["table_columns"]]
    assert columns == ["n_nationkey", "n_name", "n_regionkey", "n_comment"]


def test_get_table_schema(conn: flightsql.Connection) -> None:
    schema = conn.adbc_get_table_schema("region", db_schema_filter="tpch")
    assert schema.names == ["r_regionkey", "r_name", "r_comment"]
    assert schema.field("r_name").type == pa.string()
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM tpch.region")
        assert cur.fetch_arrow_table().schema.equals(schema)


def test_get_table_types(conn: flightsql.Connection) -> None:
    assert conn.adbc_get_table_types() == ["TABLE"]


def test_basic_auth_login_through_adbc(server: RunningServer) -> None:
    conn = flightsql.connect(
        server.uri, db_kwargs={"username": "alice", "password": "wonderland"}
    )
    with conn, conn.cursor() as cur:
        cur.execute("SELECT 1 AS one")
        assert cur.fetchall() == [(1,)]


def test_second_rotation_token_accepted(server: RunningServer) -> None:
    with adbc_connect(server, "second-token") as conn, conn.cursor() as cur:
        cur.execute("SELECT 2")
        assert cur.fetchall() == [(2,)]


def test_concurrent_clients_get_right_answers(server: RunningServer) -> None:
    queries = {
        "SELECT count(*) FROM tpch.lineitem": 60175,
        "SELECT count(*) FROM tpch.orders WHERE o_orderstatus = 'F'": None,
        "SELECT sum(c_custkey) FROM tpch.customer": 1500 * 1501 // 2,
        "SELECT max(n_nationkey) FROM tpch.nation": 24,
    }

    def run(query: str) -> object:
        with adbc_connect(server) as conn, conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchone()[0]

    baseline = {q: run(q) for q in queries}
    for query, expected in queries.items():
        if expected is not None:
            assert baseline[query] == expected
    with ThreadPoolExecutor(max_workers=8) as pool:
        work = [q for q in queries for _ in range(6)]
        results = list(pool.map(run, work))
    assert results == [baseline[q] for q in work]


def test_parameter_of_wrong_type_is_invalid_argument(conn: flightsql.Connection) -> None:
    with conn.cursor() as cur, pytest.raises(adbc_driver_manager.Error) as err:
        cur.execute("SELECT n_name FROM tpch.nation WHERE n_nationkey = ?", ("not a number",))
        cur.fetchall()
    assert err.value.status_code == adbc_driver_manager.AdbcStatusCode.INVALID_ARGUMENT
    assert "Traceback" not in str(err.value)


def test_explain_and_explain_analyze(conn: flightsql.Connection) -> None:
    with conn.cursor() as cur:
        cur.execute("EXPLAIN SELECT count(*) FROM tpch.lineitem WHERE l_quantity > 10")
        rows = dict(cur.fetchall())
        assert set(rows) == {"logical_plan", "physical_plan"}
        assert "Filter" in rows["logical_plan"] and "lineitem" in rows["logical_plan"]
        assert "AggregateExec" in rows["physical_plan"]
        cur.execute("EXPLAIN ANALYZE SELECT count(*) FROM tpch.lineitem WHERE l_quantity > 10")
        ((kind, plan),) = cur.fetchall()
        assert kind == "Plan with Metrics"
        assert "output_rows=" in plan


def test_prepared_query_sees_writes_made_between_executions(
        conn: flightsql.Connection) -> None:
    """The plan made at prepare serves an execution only while the tables it reads are
    unchanged: each execution after a write sees the write."""
    query = "SELECT count(*) FROM public.prepared_then_written"
    with conn.cursor() as writer, conn.cursor() as reader:
        writer.execute("CREATE TABLE public.prepared_then_written (v BIGINT)")
        writer.execute("INSERT INTO public.prepared_then_written VALUES (1)")
        reader.adbc_prepare(query)
        writer.execute("INSERT INTO public.prepared_then_written VALUES (2), (3)")
        counts = []
        for values in ("(4)", "(5), (6)", None):
            reader.execute(query)
            counts.append(reader.fetchall())
            reader.execute(query)  # again with nothing written in between
            counts.append(reader.fetchall())
            if values:
                writer.execute(f"INSERT INTO public.prepared_then_written VALUES {values}")
        assert counts == [[(3,)], [(3,)], [(4,)], [(4,)], [(6,)], [(6,)]]
        writer.execute("DROP TABLE public.prepared_then_written")


def test_prepared_now_is_the_time_of_each_execution(conn: flightsql.Connection) -> None:
    """A DataFusion frame fixes now() when it is made: each execution of a prepared
    statement gets a frame of its own, however soon after prepare or each other."""
    stamps = []
    with conn.cursor() as cur:
        cur.adbc_prepare("SELECT now() AS t")
        prepared_at = time.time()
        for pause_s in (1.5, 0.3, 0.3):
            time.sleep(pause_s)
            cur.execute("SELECT now() AS t")
            stamps.append(cur.fetch_arrow_table().column("t").cast(pa.int64())[0].as_py() / 1e9)
    assert stamps[0] >= prepared_at + 1.0
    assert stamps[1] >= stamps[0] + 0.25
    assert stamps[2] >= stamps[1] + 0.25


def test_table_functions_and_constant_queries(conn: flightsql.Connection) -> None:
    """Table functions run in the server (their scans do not survive a worker's plan
    serialization) and constant queries skip the worker: both answer over Flight."""
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) AS n, sum(value) AS s FROM generate_series(1, 1000)")
        assert cur.fetchall() == [(1000, 500500)]
        cur.execute("SELECT count(*) FROM range(10)")
        assert cur.fetchall() == [(10,)]
        cur.execute("SELECT 1 AS one, 'x' || 'y' AS xy")
        table = cur.fetch_arrow_table()
    assert table.to_pylist() == [{"one": 1, "xy": "xy"}]
    assert table.schema.field("xy").type == pa.string()


def test_a_constant_run_again_answers_the_same(conn: flightsql.Connection) -> None:
    """Once planned, a constant is prepared, run and closed again on the server's gRPC
    thread (flight_server.grpc_shortcuts): its answers stay right on a reused cursor, on
    new cursors, and between queries that are not constants."""
    query = "SELECT 7 AS seven, 'q' AS q"
    with conn.cursor() as reused:
        for _ in range(3):
            reused.execute(query)
            assert reused.fetchall() == [(7, "q")]
            with conn.cursor() as fresh:
                fresh.execute(query)
                assert fresh.fetch_arrow_table().to_pylist() == [{"seven": 7, "q": "q"}]
            reused.execute("SELECT count(*) FROM tpch.nation")
            assert reused.fetchall() == [(25,)]


def test_big_result_streams_whole_through_adbc(conn: flightsql.Connection) -> None:
    """A result of a dozen 4 MiB messages reuses the query worker's three shared-memory
    slots several times over on its way to the client; every row arrives, in order. A
    plain scan of the same table (read in batches bigger than the usual, each encoded
    straight into a slot) arrives whole too."""
    rows = 1_000_000
    table = pa.table({"id": pa.array(range(rows), pa.int64()),
                      "twice": pa.array(range(0, 2 * rows, 2), pa.int64()),
                      "label": pa.array([f"r{i % 997}" for i in range(rows)])})
    with conn.cursor() as cur:
        cur.adbc_ingest("big_stream", pa.Table.from_batches(table.to_batches(65536)),
                        mode="replace", db_schema_name="public")
        cur.execute("SELECT id, twice, label FROM public.big_stream ORDER BY id")
        got = cur.fetch_arrow_table()
        cur.execute("SELECT * FROM public.big_stream")
        scanned = cur.fetch_arrow_table()
        cur.execute("DROP TABLE public.big_stream")
    assert got.nbytes > 3 * 4 * 1024 * 1024
    assert got.combine_chunks().equals(table.combine_chunks())
    assert scanned.sort_by("id").combine_chunks().equals(table.combine_chunks())


def test_server_processes_keep_freed_memory_a_while(server: RunningServer,
                                                    conn: flightsql.Connection) -> None:
    """The `krishiv` command starts its query workers with mimalloc's purge delay set
    (flight_server/launch.py), since the setting must be in place before Arrow loads."""
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM lineitem")
        cur.fetchall()
    children = [stat.parent for stat in Path("/proc").glob("[0-9]*/stat")
                if _parent_pid(stat) == server.process.pid]
    assert children
    for child in children:
        environment = (child / "environ").read_bytes().split(b"\0")
        assert b"MIMALLOC_PURGE_DELAY=10000" in environment


def _parent_pid(stat: Path) -> int | None:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):  # the process is gone
        return None
