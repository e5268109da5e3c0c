"""Client SQL cannot touch server files or settings; runaway queries end cleanly."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import adbc_driver_manager
import grpc
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from flight_server.generated import Flight_pb2 as fpb
from flight_server.generated import FlightSql_pb2 as sql
from flight_server.protocol import pack
from tests.conftest import adbc_connect
from tests.cpu import assert_cpu_freed, wait_busy
from tests.flight_raw import bearer, fetch, grpc_status_of_query
from tests.servers import RunningServer, running_server

# Minutes of work (18e9 joined rows).
CROSS_JOIN = ("SELECT count(*) FROM tpch.lineitem a, tpch.lineitem b, tpch.region c "
              "WHERE a.l_orderkey + b.l_orderkey > c.r_regionkey")
BIG_AGGREGATE = "SELECT l_orderkey, array_agg(l_comment) FROM tpch.lineitem GROUP BY l_orderkey"


@pytest.fixture(scope="module")
def limited(demo_warehouse: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[RunningServer]:
    args = ["--memory-limit", "2M", "--query-timeout", "2"]
    with running_server(demo_warehouse, tmp_path_factory.mktemp("limited"), args,
                        "limit-token") as server:
        yield server


def _query(server: RunningServer, text: str) -> object:
    client = flight.connect(server.uri)
    try:
        return fetch(client, sql.CommandStatementQuery(query=text), bearer(server.token or ""))[1]
    finally:
        client.close()


@pytest.mark.parametrize(
    ("query", "code", "message"),
    [
        ("SELEC 1", grpc.StatusCode.INVALID_ARGUMENT, "SELEC"),
        ("SELECT * FROM tpch.nope", grpc.StatusCode.NOT_FOUND, "tpch.nope' not found"),
        ("SELECT nope FROM tpch.nation", grpc.StatusCode.INVALID_ARGUMENT, "nope"),
        ("COPY (SELECT 1) TO '/tmp/x.csv'", grpc.StatusCode.PERMISSION_DENIED, "not allowed"),
    ],
)
def test_exact_status_codes(
    server: RunningServer, query: str, code: grpc.StatusCode, message: str
) -> None:
    got_code, got_message = grpc_status_of_query(server.port, query, server.token or "")
    assert got_code == code
    assert message in got_message
    assert "\n" not in got_message and "Traceback" not in got_message


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE EXTERNAL TABLE pw (line VARCHAR) STORED AS CSV LOCATION '/etc/passwd'",
        "COPY (SELECT 1) TO '/tmp/krishiv-escape.csv'",
        "SET datafusion.runtime.memory_limit = '100G'",
        "SET datafusion.execution.batch_size = 1",
        "CREATE VIEW v AS SELECT 1",
    ],
)
def test_file_and_setting_statements_are_refused(server: RunningServer, statement: str) -> None:
    with pytest.raises(flight.FlightUnauthorizedError) as err:
        _query(server, statement)
    message = str(err.value)
    assert "not allowed" in message and "Traceback" not in message
    assert not Path("/tmp/krishiv-escape.csv").exists()
    assert _query(server, "SELECT count(*) AS n FROM tpch.nation").column(0).to_pylist() == [25]


def test_url_tables_are_not_enabled(server: RunningServer) -> None:
    with pytest.raises(KeyError) as err:
        _query(server, "SELECT * FROM '/etc/passwd'")
    assert "not found" in str(err.value)


def test_bad_sql_is_invalid_argument(server: RunningServer) -> None:
    with (
        adbc_connect(server) as conn,
        conn.cursor() as cur,
        pytest.raises(adbc_driver_manager.Error) as err,
    ):
        cur.execute("SELEC 1")
    assert err.value.status_code == adbc_driver_manager.AdbcStatusCode.INVALID_ARGUMENT
    assert "SELEC" in str(err.value)
    assert "Traceback" not in str(err.value)


def test_unknown_table_is_not_found(server: RunningServer) -> None:
    with (
        adbc_connect(server) as conn,
        conn.cursor() as cur,
        pytest.raises(adbc_driver_manager.Error) as err,
    ):
        cur.execute("SELECT * FROM tpch.no_such_table")
    assert err.value.status_code == adbc_driver_manager.AdbcStatusCode.NOT_FOUND
    assert "no_such_table" in str(err.value)


def test_malformed_command_is_invalid_argument(server: RunningServer) -> None:
    client = flight.connect(server.uri)
    with pytest.raises(pa.ArrowInvalid) as err:  # INVALID_ARGUMENT
        client.get_flight_info(flight.FlightDescriptor.for_command(b"\x00garbage"),
                               bearer(server.token or ""))
    client.close()
    assert "not a serialized google.protobuf.Any" in str(err.value)
    assert "Traceback" not in str(err.value)


def test_memory_limit_ends_query_and_server_keeps_serving(limited: RunningServer) -> None:
    code, message = grpc_status_of_query(limited.port, BIG_AGGREGATE, limited.token or "")
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert message.startswith("query exceeded its memory limit")
    assert "\n" not in message and "Traceback" not in message
    assert _query(limited, "SELECT count(*) FROM tpch.region").column(0).to_pylist() == [5]


def test_query_timeout_is_deadline_exceeded(limited: RunningServer) -> None:
    """The query's status comes at its timeout, and its work stops then too."""
    started = time.monotonic()
    outcome: list[tuple[grpc.StatusCode, str]] = []
    query = threading.Thread(target=lambda: outcome.append(
        grpc_status_of_query(limited.port, CROSS_JOIN, limited.token or "")))
    query.start()
    pids = wait_busy(limited.process.pid)
    query.join(10)
    (code, message), = outcome
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert message == "query exceeded the server's timeout of 2 s"
    assert time.monotonic() - started < 10
    assert_cpu_freed(pids)
    assert _query(limited, "SELECT 1 AS one").column(0).to_pylist() == [1]


def _do_put_status(server: RunningServer, messages: list[fpb.FlightData | bytes]
                   ) -> grpc.StatusCode:
    """The status of a DoPut of `messages` (bytes are sent as they are)."""
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    do_put = channel.stream_stream(
        "/arrow.flight.protocol.FlightService/DoPut",
        request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
        response_deserializer=fpb.PutResult.FromString)
    try:
        list(do_put(iter(messages), metadata=[("authorization", f"Bearer {server.token}")]))
    except grpc.RpcError as err:
        assert "Traceback" not in (err.details() or "")
        return err.code()
    finally:
        channel.close()
    return grpc.StatusCode.OK


def test_malformed_uploads_are_invalid_and_harmless(server: RunningServer) -> None:
    command = pack(sql.CommandStatementIngest(table="fuzzed", table_definition_options=(
        sql.CommandStatementIngest.TableDefinitionOptions(
            if_not_exist=sql.CommandStatementIngest.TableDefinitionOptions
            .TABLE_NOT_EXIST_OPTION_CREATE))))
    descriptor = fpb.FlightDescriptor(type=fpb.FlightDescriptor.CMD, cmd=command)
    batch = pa.record_batch([pa.array([1, 2, 3], pa.int64())], names=["a"])
    encoded = batch.serialize()
    header_length = int.from_bytes(encoded[4:8].to_pybytes(), "little")
    batch_header = encoded[8:8 + header_length].to_pybytes()
    schema_message = pa.ipc.read_message(batch.schema.serialize())
    schema_header = schema_message.metadata.to_pybytes()
    first = fpb.FlightData(flight_descriptor=descriptor, data_header=schema_header)
    cases: list[list[fpb.FlightData | bytes]] = [
        [b"\x12\xff"],  # a field longer than the message
        [b"\x0a\x03\xff\xff\xff"],  # a descriptor that is no FlightDescriptor
        [b"\x13"],  # a group (wire type 3), long deprecated: refused
        [first, b"\xc2\x3e\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"],  # endless varint
        [first.SerializeToString() + b"\x12"],  # cut short after a tag
        [fpb.FlightData(flight_descriptor=descriptor, data_header=batch_header)],  # no schema
        [fpb.FlightData(flight_descriptor=descriptor, data_header=b"\x00" * 64)],
        [fpb.FlightData(flight_descriptor=descriptor, data_header=schema_header),
         fpb.FlightData(data_header=batch_header, data_body=b"\x01" * 3)],  # body too short
        [fpb.FlightData(flight_descriptor=descriptor, data_header=schema_header),
         fpb.FlightData(data_header=schema_header[::-1], data_body=b"")],
    ]
    for messages in cases:
        assert _do_put_status(server, messages) == grpc.StatusCode.INVALID_ARGUMENT
    # still serving, and nothing was created
    assert _query(server, "SELECT count(*) AS n FROM tpch.region").column(0).to_pylist() == [5]
    code, _ = grpc_status_of_query(server.port, "SELECT * FROM public.fuzzed", server.token or "")
    assert code == grpc.StatusCode.NOT_FOUND
