"""Replays the Arrow Flight SQL JDBC driver's (DBeaver's) call sequence with raw Flight."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flight_server.generated import FlightSql_pb2 as sql
from flight_server.metadata import TABLES_SCHEMA, TABLES_WITH_SCHEMA_SCHEMA
from flight_server.protocol import pack
from flight_server.sql_info import SCHEMA as SQL_INFO_SCHEMA
from tests.flight_raw import action, basic_header, bearer, create_prepared, fetch
from tests.servers import RunningServer


@pytest.fixture()
def client(server: RunningServer) -> Iterator[flight.FlightClient]:
    c = flight.connect(server.uri)
    yield c
    c.close()


def test_handshake_basic_issues_bearer_token(server: RunningServer) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    handshake = channel.stream_stream(
        "/arrow.flight.protocol.FlightService/Handshake",
        request_serializer=lambda b: b, response_deserializer=lambda b: b,
    )
    for pad in (True, False):  # the Go driver sends unpadded base64
        call = handshake(iter([b""]), metadata=[("authorization",
                                                 basic_header("bob", "builder", pad).decode())])
        list(call)
        headers = dict(call.initial_metadata())
        token = headers["authorization"].split(" ", 1)[1]
        c = flight.connect(server.uri)
        _, table = fetch(c, sql.CommandStatementQuery(query="SELECT 7 AS x"), bearer(token))
        assert table.column("x").to_pylist() == [7]
        c.close()
    channel.close()


def test_pyarrow_basic_token_login(server: RunningServer) -> None:
    """The JDBC driver's connect: Handshake with Basic, then the issued bearer token."""
    client = flight.connect(server.uri)
    header = client.authenticate_basic_token("alice", "wonderland")
    assert header[0] == b"authorization" and header[1].startswith(b"Bearer ")
    options = flight.FlightCallOptions(headers=[header])
    _, table = fetch(client, sql.CommandGetCatalogs(), options)
    assert table.column("catalog_name").to_pylist() == ["krishiv"]
    with pytest.raises(flight.FlightUnauthenticatedError):
        client.authenticate_basic_token("alice", "not-her-password")
    client.close()


def test_get_sql_info_all_ids(client: flight.FlightClient, server: RunningServer) -> None:
    info, table = fetch(client, sql.CommandGetSqlInfo(), bearer(server.token or ""))
    assert info.schema.equals(SQL_INFO_SCHEMA)
    assert table.schema.equals(SQL_INFO_SCHEMA)
    served = set(table.column("info_name").to_pylist())
    assert served == set(sql.SqlInfo.values())
    values = dict(zip(table.column("info_name").to_pylist(), table.column("value").to_pylist(),
                      strict=True))
    assert values[sql.FLIGHT_SQL_SERVER_NAME] == "Krishiv"
    assert values[sql.FLIGHT_SQL_SERVER_READ_ONLY] is False
    assert values[sql.FLIGHT_SQL_SERVER_TRANSACTION] == sql.SQL_SUPPORTED_TRANSACTION_NONE
    assert values[sql.SQL_IDENTIFIER_QUOTE_CHAR] == '"'
    assert isinstance(values[sql.SQL_KEYWORDS], list)
    assert isinstance(values[sql.SQL_MAX_COLUMNS_IN_SELECT], int)
    assert values[sql.SQL_TRANSACTIONS_SUPPORTED] is False


def test_get_sql_info_selected_ids(client: flight.FlightClient, server: RunningServer) -> None:
    wanted = [sql.FLIGHT_SQL_SERVER_ARROW_VERSION, sql.SQL_DDL_TABLE]
    _, table = fetch(client, sql.CommandGetSqlInfo(info=wanted), bearer(server.token or ""))
    assert table.column("info_name").to_pylist() == sorted(wanted)
    assert dict(zip(table.column("info_name").to_pylist(), table.column("value").to_pylist(),
                    strict=True)) == {sql.FLIGHT_SQL_SERVER_ARROW_VERSION: pa.__version__,
                                      sql.SQL_DDL_TABLE: True}


def test_metadata_browse_like_dbeaver(client: flight.FlightClient, server: RunningServer) -> None:
    opts = bearer(server.token or "")
    _, catalogs = fetch(client, sql.CommandGetCatalogs(), opts)
    assert catalogs.column("catalog_name").to_pylist() == ["krishiv"]
    _, schemas = fetch(client, sql.CommandGetDbSchemas(catalog="krishiv"), opts)
    assert {"tpch", "public"} <= set(schemas.column("db_schema_name").to_pylist())
    info, tables = fetch(client, sql.CommandGetTables(db_schema_filter_pattern="tpch"), opts)
    assert info.schema.equals(TABLES_SCHEMA) and tables.schema.equals(TABLES_SCHEMA)
    assert len(tables) == 8
    info, tables = fetch(client, sql.CommandGetTables(
        catalog="krishiv", db_schema_filter_pattern="tpch", table_name_filter_pattern="%item",
        table_types=["TABLE"], include_schema=True), opts)
    assert info.schema.equals(TABLES_WITH_SCHEMA_SCHEMA)
    assert tables.column("table_name").to_pylist() == ["lineitem"]
    schema = pa.ipc.read_schema(pa.py_buffer(tables.column("table_schema")[0].as_py()))
    assert schema.names[:2] == ["l_orderkey", "l_partkey"] and len(schema) == 16
    price = schema.field("l_extendedprice").metadata
    assert price[b"ARROW:FLIGHT:SQL:TYPE_NAME"] == b"DECIMAL"
    assert price[b"ARROW:FLIGHT:SQL:PRECISION"] == b"15"
    assert price[b"ARROW:FLIGHT:SQL:TABLE_NAME"] == b"lineitem"
    assert schema.field("l_comment").metadata[b"ARROW:FLIGHT:SQL:TYPE_NAME"] == b"VARCHAR"
    _, none = fetch(client, sql.CommandGetTables(table_types=["VIEW"]), opts)
    assert len(none) == 0
    _, wrong_catalog = fetch(client, sql.CommandGetDbSchemas(catalog="other"), opts)
    assert len(wrong_catalog) == 0
    _, types = fetch(client, sql.CommandGetTableTypes(), opts)
    assert types.column("table_type").to_pylist() == ["TABLE"]


def test_prepared_query_flow(client: flight.FlightClient, server: RunningServer) -> None:
    opts = bearer(server.token or "")
    prepared = create_prepared(
        client, "SELECT n_name, n_regionkey FROM tpch.nation WHERE n_nationkey = ?", opts)
    dataset = pa.ipc.read_schema(pa.py_buffer(prepared.dataset_schema))
    assert dataset.names == ["n_name", "n_regionkey"]
    params = pa.ipc.read_schema(pa.py_buffer(prepared.parameter_schema))
    assert [f.type for f in params] == [pa.int64()]
    command = sql.CommandPreparedStatementQuery(
        prepared_statement_handle=prepared.prepared_statement_handle)
    descriptor = flight.FlightDescriptor.for_command(pack(command))
    # A dense union parameter, as the JDBC driver and flightsql-dbapi bind them.
    union = pa.UnionArray.from_dense(pa.array([0], pa.int8()), pa.array([0], pa.int32()),
                                     [pa.array([10], pa.int64())], ["int64"])
    batch = pa.record_batch([union], names=["$1"])
    writer, metadata_reader = client.do_put(descriptor, batch.schema, opts)
    writer.write_batch(batch)
    writer.done_writing()
    ack = metadata_reader.read()
    writer.close()
    assert ack is not None
    info, table = fetch(client, command, opts)
    assert info.schema.equals(dataset)
    assert table.to_pylist() == [{"n_name": "IRAN", "n_regionkey": 4}]
    action(client, "ClosePreparedStatement", sql.ActionClosePreparedStatementRequest(
        prepared_statement_handle=prepared.prepared_statement_handle), opts)
    with pytest.raises(KeyError) as closed:  # NOT_FOUND
        fetch(client, command, opts)
    assert "unknown or expired prepared statement handle" in str(closed.value)
