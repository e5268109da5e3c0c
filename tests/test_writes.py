"""DDL and DML on Iceberg tables through every Flight SQL path, and atomic failures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import grpc
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from catalog import IcebergCatalog, TableIdent
from flight_server.generated import Flight_pb2 as fpb
from flight_server.generated import FlightSql_pb2 as sql
from flight_server.protocol import pack
from tests.conftest import adbc_connect, fetch_rows
from tests.flight_raw import action, bearer, create_prepared, fetch, grpc_status_of_query
from tests.servers import RunningServer, running_server, start_server

TOKEN = "writer-token"


@pytest.fixture(scope="module")
def write_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server on its own warehouse: these tests change tables."""
    root = tmp_path_factory.mktemp("writes")
    with running_server(root / "warehouse", root, ["--demo"], TOKEN) as server:
        yield server


@pytest.fixture()
def wconn(write_server: RunningServer) -> Iterator[flightsql.Connection]:
    connection = adbc_connect(write_server)
    yield connection
    connection.close()


def _one(conn: flightsql.Connection, query: str) -> object:
    with conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchone()[0]


def test_ddl_and_dml_through_adbc(wconn: flightsql.Connection) -> None:
    assert fetch_rows(wconn, "CREATE SCHEMA shop") == [(0,)]
    fetch_rows(wconn, "CREATE TABLE shop.items "
                      "(id BIGINT NOT NULL, name VARCHAR, price DECIMAL(10,2))")
    inserted = fetch_rows(wconn, "INSERT INTO shop.items VALUES (1, 'pen', 1.50), (2, NULL, 2.25)")
    assert inserted == [(2,)]
    assert fetch_rows(wconn, "INSERT INTO shop.items SELECT n_nationkey + 100, n_name, 0.10 "
                       "FROM tpch.nation WHERE n_regionkey = 0") == [(5,)]
    with wconn.cursor() as cur:
        cur.execute("SELECT count(*) AS n, CAST(sum(price) AS DOUBLE) AS s, count(name) AS c "
                    "FROM shop.items")
        assert cur.fetchall() == [(7, 4.25, 6)]
    schema = wconn.adbc_get_table_schema("items", db_schema_filter="shop")
    assert schema.names == ["id", "name", "price"]
    assert not schema.field("id").nullable
    fetch_rows(wconn, "DROP TABLE shop.items")
    fetch_rows(wconn, "DROP SCHEMA shop")
    schemas = wconn.adbc_get_objects(depth="db_schemas").read_all().to_pylist()
    assert "shop" not in [s["db_schema_name"] for s in schemas[0]["catalog_db_schemas"]]


def test_create_table_as_select(wconn: flightsql.Connection) -> None:
    expected = _one(wconn, "SELECT count(*) FROM tpch.orders WHERE o_orderstatus = 'F'")
    created = fetch_rows(wconn, "CREATE TABLE tpch.finished AS SELECT o_orderkey, o_totalprice "
                          "FROM tpch.orders WHERE o_orderstatus = 'F'")
    assert created == [(expected,)]
    assert _one(wconn, "SELECT count(*) FROM tpch.finished") == expected
    assert fetch_rows(wconn, "CREATE TABLE IF NOT EXISTS tpch.finished AS SELECT 1 AS x") == [(0,)]
    fetch_rows(wconn, "DROP TABLE tpch.finished")
    assert fetch_rows(wconn, "DROP TABLE IF EXISTS tpch.finished") == [(0,)]


def test_a_query_run_again_after_a_write_sees_it(wconn: flightsql.Connection) -> None:
    """The same query text, run again over unchanged tables, reuses its physical plan;
    after an insert (a new snapshot) the same text answers with the new rows, through
    plain statements and through one prepared statement executed again."""
    fetch_rows(wconn, "CREATE TABLE public.rerun (id BIGINT, v INT)")
    fetch_rows(wconn, "INSERT INTO public.rerun VALUES (1, 10), (2, 20)")
    text = "SELECT count(*) AS n, sum(v) AS s FROM public.rerun WHERE id > 0"
    with wconn.cursor() as cur:
        for _ in range(2):
            assert fetch_rows(wconn, text) == [(2, 30)]
            cur.execute(text)
            assert cur.fetchall() == [(2, 30)]
        fetch_rows(wconn, "INSERT INTO public.rerun VALUES (3, 30)")
        assert fetch_rows(wconn, text) == [(3, 60)]
        cur.execute(text)
        assert cur.fetchall() == [(3, 60)]
    fetch_rows(wconn, "DROP TABLE public.rerun")


def test_a_table_made_again_is_read_with_its_new_columns(wconn: flightsql.Connection) -> None:
    """An empty table dropped and created again under its name has the new columns (both
    versions have no snapshot: the server must not serve the first one's columns)."""
    fetch_rows(wconn, "CREATE TABLE public.remade (a INT)")
    with wconn.cursor() as cur:
        cur.execute("SELECT * FROM public.remade")
        assert cur.fetch_arrow_table().schema.names == ["a"]
    fetch_rows(wconn, "DROP TABLE public.remade")
    fetch_rows(wconn, "CREATE TABLE public.remade (b VARCHAR, c INT)")
    with wconn.cursor() as cur:
        cur.execute("SELECT * FROM public.remade")
        assert cur.fetch_arrow_table().schema.names == ["b", "c"]
        fetch_rows(wconn, "INSERT INTO public.remade VALUES ('x', 1)")
        cur.execute("SELECT b, c FROM public.remade")
        assert cur.fetchall() == [("x", 1)]
    fetch_rows(wconn, "DROP TABLE public.remade")


def test_failed_writes_leave_tables_unchanged(
    wconn: flightsql.Connection, write_server: RunningServer
) -> None:
    fetch_rows(wconn, "CREATE TABLE public.strict (id BIGINT NOT NULL, v INT)")
    fetch_rows(wconn, "INSERT INTO public.strict VALUES (1, 10), (2, 20)")
    failing = [
        ("INSERT INTO public.strict VALUES (3, 30), (NULL, 40)", grpc.StatusCode.INVALID_ARGUMENT),
        ("INSERT INTO public.strict SELECT 5, 10 / (n_nationkey - 3) FROM tpch.nation",
         grpc.StatusCode.INVALID_ARGUMENT),
        ("INSERT INTO public.strict VALUES (1)", grpc.StatusCode.INVALID_ARGUMENT),
        ("INSERT INTO public.nowhere VALUES (1, 1)", grpc.StatusCode.NOT_FOUND),
        ("CREATE TABLE public.strict (a INT)", grpc.StatusCode.ALREADY_EXISTS),
        ("CREATE TABLE public.broken AS SELECT 1 / (n_nationkey - 3) FROM tpch.nation",
         grpc.StatusCode.INVALID_ARGUMENT),
        ("DROP TABLE public.never_was", grpc.StatusCode.NOT_FOUND),
        ("CREATE TABLE public.bad (a NOSUCHTYPE)", grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for statement, code in failing:
        got, message = grpc_status_of_query(write_server.port, statement, TOKEN)
        assert got == code, (statement, got, message)
        assert message and "\n" not in message and "Traceback" not in message
    assert fetch_rows(wconn, "SELECT id, v FROM public.strict ORDER BY id") == [(1, 10), (2, 20)]
    tables = wconn.adbc_get_objects(depth="tables", db_schema_filter="public").read_all()
    names = [t["table_name"] for t in tables.to_pylist()[0]["catalog_db_schemas"][0]
             ["db_schema_tables"]]
    assert "broken" not in names and "bad" not in names
    fetch_rows(wconn, "DROP TABLE public.strict")


def test_statement_update_via_do_put(write_server: RunningServer) -> None:
    client = flight.connect(write_server.uri)
    options = bearer(TOKEN)

    def update(query: str) -> int:
        command = sql.CommandStatementUpdate(query=query)
        writer, reader = client.do_put(
            flight.FlightDescriptor.for_command(pack(command)), pa.schema([]), options)
        writer.done_writing()
        metadata = reader.read()
        writer.close()  # raises the call's error status, if any
        return sql.DoPutUpdateResult.FromString(metadata.to_pybytes()).record_count

    assert update("CREATE TABLE public.log (id INT, msg VARCHAR)") == 0
    assert update("INSERT INTO public.log VALUES (1, 'a'), (2, 'b'), (3, 'c')") == 3
    with pytest.raises(pa.ArrowInvalid, match="takes DDL or DML"):
        update("SELECT 1")
    _, table = fetch(client, sql.CommandStatementQuery(query="SELECT count(*) AS n FROM "
                                                             "public.log"), options)
    assert table.column("n").to_pylist() == [3]
    assert update("DROP TABLE public.log") == 0
    client.close()


def test_jdbc_style_prepared_update(write_server: RunningServer) -> None:
    """The JDBC driver prepares everything; an empty dataset schema sends it to DoPut."""
    client = flight.connect(write_server.uri)
    options = bearer(TOKEN)
    for ddl in ("CREATE TABLE public.people (id BIGINT, name VARCHAR)",):
        prepared = create_prepared(client, ddl, options)
        assert pa.ipc.read_schema(pa.py_buffer(prepared.dataset_schema)).names == []
        command = sql.CommandPreparedStatementUpdate(
            prepared_statement_handle=prepared.prepared_statement_handle)
        writer, reader = client.do_put(flight.FlightDescriptor.for_command(pack(command)),
                                       pa.schema([]), options)
        writer.done_writing()
        assert sql.DoPutUpdateResult.FromString(reader.read().to_pybytes()).record_count == 0
        writer.close()
    prepared = create_prepared(client, "INSERT INTO public.people VALUES (?, ?)", options)
    command = sql.CommandPreparedStatementUpdate(
        prepared_statement_handle=prepared.prepared_statement_handle)
    params = pa.record_batch([pa.array([1, 2, 3], pa.int64()), pa.array(["ann", "bo", None])],
                             names=["$1", "$2"])
    writer, reader = client.do_put(flight.FlightDescriptor.for_command(pack(command)),
                                   params.schema, options)
    writer.write_batch(params)
    writer.done_writing()
    assert sql.DoPutUpdateResult.FromString(reader.read().to_pybytes()).record_count == 3
    writer.close()
    action(client, "ClosePreparedStatement", sql.ActionClosePreparedStatementRequest(
        prepared_statement_handle=prepared.prepared_statement_handle), options)
    _, table = fetch(client, sql.CommandStatementQuery(
        query="SELECT id, name FROM public.people ORDER BY id"), options)
    assert table.to_pylist() == [{"id": 1, "name": "ann"}, {"id": 2, "name": "bo"},
                                 {"id": 3, "name": None}]
    client.close()


def test_adbc_executemany(wconn: flightsql.Connection) -> None:
    fetch_rows(wconn, "CREATE TABLE public.pairs (k BIGINT, v VARCHAR)")
    with wconn.cursor() as cur:
        cur.executemany("INSERT INTO public.pairs VALUES (?, ?)", [(1, "x"), (2, "y"), (3, "z")])
    assert fetch_rows(wconn, "SELECT k, v FROM public.pairs ORDER BY k") == [(1, "x"), (2, "y"),
                                                                        (3, "z")]
    fetch_rows(wconn, "DROP TABLE public.pairs")


def test_ddl_runs_at_get_flight_info_not_do_get(write_server: RunningServer,
                                                wconn: flightsql.Connection) -> None:
    client = flight.connect(write_server.uri)
    options = bearer(TOKEN)
    command = sql.CommandStatementQuery(query="CREATE TABLE public.eager (a INT)")
    descriptor = flight.FlightDescriptor.for_command(pack(command))
    schema = client.get_schema(descriptor, options).schema
    assert schema.names == ["count"]
    tables = wconn.adbc_get_objects(depth="tables", db_schema_filter="public").read_all()
    assert "eager" not in str(tables.to_pylist())  # GetSchema did not run it
    client.get_flight_info(descriptor, options)  # no DoGet
    tables = wconn.adbc_get_objects(depth="tables", db_schema_filter="public").read_all()
    assert "eager" in str(tables.to_pylist())
    client.close()
    fetch_rows(wconn, "DROP TABLE public.eager")


def test_new_table_visible_to_other_connections(write_server: RunningServer) -> None:
    with adbc_connect(write_server) as first, adbc_connect(write_server) as second:
        fetch_rows(first, "CREATE TABLE public.shared AS SELECT 42 AS answer")
        assert _one(second, "SELECT answer FROM public.shared") == 42
        fetch_rows(second, "INSERT INTO public.shared VALUES (43)")
        assert _one(first, "SELECT max(answer) FROM public.shared") == 43
        fetch_rows(first, "DROP TABLE public.shared")


def test_writes_survive_restart(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse"
    first = start_server(warehouse, tmp_path)
    try:
        with adbc_connect(first) as conn:
            fetch_rows(conn, "CREATE TABLE public.kept AS SELECT 7 AS seven")
    finally:
        first.stop()
    second = start_server(warehouse, tmp_path)
    try:
        with adbc_connect(second) as conn:
            assert _one(conn, "SELECT seven FROM public.kept") == 7
    finally:
        second.stop()


def test_kept_plain_reads_see_every_write(tmp_path: Path) -> None:
    """Plain reads are kept in the server's memory (here KRISHIV_READ_CACHE_BYTES=64M); a
    write through the server, a table dropped and made again, and another writer of the
    catalog are each seen at the next read, by a new cursor and by a reused one."""
    warehouse = tmp_path / "warehouse"
    read = "SELECT * FROM public.reads"
    with (running_server(warehouse, tmp_path, env={"KRISHIV_READ_CACHE_BYTES": "64M"})
          as server, adbc_connect(server) as conn, conn.cursor() as reused):
        assert "read cache: up to 64 MiB of plain table reads" in server.log()

        def both_read() -> list[tuple[object, ...]]:
            reused.execute(read)
            rows = sorted(reused.fetchall())
            assert sorted(fetch_rows(conn, read)) == rows
            return rows

        fetch_rows(conn, "CREATE TABLE public.reads (id BIGINT)")
        fetch_rows(conn, "INSERT INTO public.reads VALUES (1), (2)")
        assert both_read() == both_read() == [(1,), (2,)]
        fetch_rows(conn, "INSERT INTO public.reads VALUES (3)")
        assert both_read() == [(1,), (2,), (3,)]
        fetch_rows(conn, "DROP TABLE public.reads")
        fetch_rows(conn, "CREATE TABLE public.reads AS SELECT CAST(10 AS BIGINT) AS id")
        assert both_read() == [(10,)]
        IcebergCatalog.embedded(str(warehouse)).append(
            TableIdent("public", "reads"), pa.table({"id": pa.array([11], pa.int64())}))
        assert both_read() == [(10,), (11,)]


def test_a_missing_data_file_is_an_error_not_missing_rows(tmp_path: Path) -> None:
    """A data file of a table's current version that vanished from storage makes reads of
    the table fail with UNAVAILABLE, naming the file, rather than answer without its rows
    (even a read kept in the cache); the table reads again once the file is back, and can
    be dropped meanwhile."""
    warehouse = tmp_path / "warehouse"
    read = "SELECT * FROM public.lost"
    with running_server(warehouse, tmp_path, token=TOKEN) as server, \
            adbc_connect(server) as conn:
        fetch_rows(conn, "CREATE TABLE public.lost (id BIGINT)")
        fetch_rows(conn, "INSERT INTO public.lost VALUES (1), (2)")
        fetch_rows(conn, "INSERT INTO public.lost VALUES (3)")
        assert sorted(fetch_rows(conn, read)) == [(1,), (2,), (3,)]
        files = IcebergCatalog.embedded(str(warehouse)).scan(
            TableIdent("public", "lost")).data_files
        assert len(files) == 2
        gone = Path(files[0])
        gone.rename(tmp_path / "moved.parquet")
        code, message = grpc_status_of_query(server.port, read, TOKEN)
        assert code == grpc.StatusCode.UNAVAILABLE
        assert message == (f"cannot read table public.lost: its data file {gone} is missing")
        with pytest.raises(adbc_driver_manager.Error, match="is missing"):
            fetch_rows(conn, "SELECT count(*) FROM public.lost")
        (tmp_path / "moved.parquet").rename(gone)
        assert sorted(fetch_rows(conn, read)) == [(1,), (2,), (3,)]
        gone.unlink()
        fetch_rows(conn, "DROP TABLE public.lost")
        with pytest.raises(adbc_driver_manager.Error, match="lost"):
            fetch_rows(conn, read)


def test_adbc_error_codes_for_writes(wconn: flightsql.Connection) -> None:
    with wconn.cursor() as cur, pytest.raises(adbc_driver_manager.Error) as err:
        cur.execute("CREATE TABLE tpch.nation (a INT)")
    assert err.value.status_code == adbc_driver_manager.AdbcStatusCode.ALREADY_EXISTS


def test_primary_keys_and_empty_foreign_keys(write_server: RunningServer,
                                             wconn: flightsql.Connection) -> None:
    fetch_rows(wconn, "CREATE TABLE public.keyed (region VARCHAR NOT NULL, id BIGINT NOT NULL, "
                "note VARCHAR, PRIMARY KEY (region, id))")
    fetch_rows(wconn, "CREATE TABLE public.plain_t (a INT)")
    client = flight.connect(write_server.uri)
    options = bearer(TOKEN)
    info, keys = fetch(client, sql.CommandGetPrimaryKeys(db_schema="public", table="keyed"),
                       options)
    assert info.schema.names == ["catalog_name", "db_schema_name", "table_name", "column_name",
                                 "key_name", "key_sequence"]
    assert [(r["column_name"], r["key_sequence"]) for r in keys.to_pylist()] == [
        ("region", 1), ("id", 2)]
    assert keys.column("catalog_name").to_pylist() == ["krishiv", "krishiv"]
    _, none = fetch(client, sql.CommandGetPrimaryKeys(db_schema="public", table="plain_t"),
                    options)
    assert none.num_rows == 0
    for command in (sql.CommandGetImportedKeys(db_schema="public", table="keyed"),
                    sql.CommandGetExportedKeys(db_schema="public", table="keyed"),
                    sql.CommandGetCrossReference(pk_table="keyed", fk_table="plain_t")):
        info, rows = fetch(client, command, options)
        assert rows.num_rows == 0
        assert info.schema.field("update_rule").type == pa.uint8()
        assert len(info.schema) == 13
    client.close()
    fetch_rows(wconn, "DROP TABLE public.keyed")
    fetch_rows(wconn, "DROP TABLE public.plain_t")


def test_xdbc_type_info_covers_returned_types(write_server: RunningServer) -> None:
    client = flight.connect(write_server.uri)
    options = bearer(TOKEN)
    info, types = fetch(client, sql.CommandGetXdbcTypeInfo(), options)
    assert info.schema.equals(types.schema)
    names = types.column("type_name").to_pylist()
    for needed in ("BIGINT", "INTEGER", "DOUBLE", "DECIMAL", "VARCHAR", "DATE", "TIMESTAMP",
                   "BOOLEAN"):
        assert needed in names
    data_types = types.column("data_type").to_pylist()
    assert data_types == sorted(data_types)
    _, only = fetch(client, sql.CommandGetXdbcTypeInfo(data_type=sql.XDBC_VARCHAR), options)
    assert only.column("type_name").to_pylist() == ["VARCHAR"]
    assert only.column("literal_prefix").to_pylist() == ["'"]
    client.close()


def test_update_with_a_bare_descriptor(write_server: RunningServer) -> None:
    """A DoPut carrying only the command (no schema message) still runs the update."""
    channel = grpc.insecure_channel(f"127.0.0.1:{write_server.port}")
    do_put = channel.stream_stream("/arrow.flight.protocol.FlightService/DoPut",
                                   request_serializer=fpb.FlightData.SerializeToString,
                                   response_deserializer=fpb.PutResult.FromString)
    command = pack(sql.CommandStatementUpdate(query="CREATE TABLE public.bare (a INT)"))
    message = fpb.FlightData(flight_descriptor=fpb.FlightDescriptor(
        type=fpb.FlightDescriptor.CMD, cmd=command))
    (result,) = list(do_put(iter([message]), metadata=[("authorization", f"Bearer {TOKEN}")]))
    assert sql.DoPutUpdateResult.FromString(result.app_metadata).record_count == 0
    channel.close()
    with adbc_connect(write_server) as conn:
        assert fetch_rows(conn, "SELECT count(*) FROM public.bare") == [(0,)]
        fetch_rows(conn, "DROP TABLE public.bare")


def test_review_regressions(write_server: RunningServer, wconn: flightsql.Connection) -> None:
    """Bugs found in review: each must stay fixed."""
    code, _ = grpc_status_of_query(
        write_server.port,
        "CREATE TABLE tpch.sneak (a bigint DEFAULT $$($$) AS SELECT 1 AS a", TOKEN)
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # never run in an unguarded context
    code, _ = grpc_status_of_query(write_server.port, 'CREATE TABLE tpch."" (a INT)', TOKEN)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = grpc_status_of_query(write_server.port,
                                   "DROP TABLE IF EXISTS tpch.zz1, tpch.nation", TOKEN)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fetch_rows(wconn, "SELECT count(*) FROM tpch.nation") == [(25,)]
    tables = wconn.adbc_get_objects(depth="all", db_schema_filter="tpch").read_all()
    assert len(tables.to_pylist()[0]["catalog_db_schemas"][0]["db_schema_tables"]) == 8
    # GetSchema of a prepared INSERT must not run it
    fetch_rows(wconn, "CREATE TABLE public.once (a INT)")
    client = flight.connect(write_server.uri)
    prepared = create_prepared(client, "INSERT INTO public.once VALUES (1)", bearer(TOKEN))
    command = sql.CommandPreparedStatementQuery(
        prepared_statement_handle=prepared.prepared_statement_handle)
    for _ in range(2):
        schema = client.get_schema(flight.FlightDescriptor.for_command(pack(command)),
                                   bearer(TOKEN)).schema
        assert schema.names == ["count"]
    client.close()
    assert fetch_rows(wconn, "SELECT count(*) FROM public.once") == [(0,)]
    # a batch of parameter rows is one commit: a bad row writes nothing
    fetch_rows(wconn, "CREATE TABLE public.batch (a BIGINT NOT NULL)")
    with wconn.cursor() as cur, pytest.raises(adbc_driver_manager.Error):
        cur.executemany("INSERT INTO public.batch VALUES (?)", [(1,), (2,), (None,), (4,)])
    assert fetch_rows(wconn, "SELECT count(*) FROM public.batch") == [(0,)]
    for table in ("once", "batch"):
        fetch_rows(wconn, f"DROP TABLE public.{table}")
