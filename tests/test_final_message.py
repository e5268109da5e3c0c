"""Short answers leave with their status (flight_server.final_message), over real gRPC."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pyarrow.flight as flight
import pytest
from google.protobuf import any_pb2
from grpc import _server as grpc_internals

from catalog import InMemoryCatalog
from engine import EngineConfig, SqlEngine
from flight_server import final_message
from flight_server.auth import Authenticator
from flight_server.config import AuthConfig
from flight_server.final_message import Final, message_bytes, send_final_with_status, with_final
from flight_server.generated import Flight_pb2 as fpb
from flight_server.generated import FlightSql_pb2 as sql
from flight_server.protocol import pack
from flight_server.server import FlightSqlHandler
from flight_server.transport import FlightService, TransportConfig, start_flight_server
from tests.conftest import TOKEN
from tests.flight_raw import bearer, grpc_action, grpc_do_get, grpc_flight_info
from tests.servers import RunningServer

_METADATA = [("authorization", f"Bearer {TOKEN}")]


@pytest.fixture()
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        yield opened


def _action(channel: grpc.Channel, kind: str, body: bytes) -> list[fpb.Result]:
    return grpc_action(channel, kind, body, _METADATA)


def _do_get(channel: grpc.Channel, ticket: fpb.Ticket) -> list[fpb.FlightData]:
    return grpc_do_get(channel, ticket, _METADATA)


def _flight_info(channel: grpc.Channel, command: bytes) -> fpb.FlightInfo:
    return grpc_flight_info(channel, command, _METADATA)


def test_the_installed_grpcio_sends_final_messages_with_the_status() -> None:
    """The grpcio this project installs has the internals final_message was written
    against (if a new grpcio changes them, short answers still go out, one hand-off
    slower: this test says so)."""
    assert send_final_with_status()
    loop = grpc_internals._send_message_callback_to_blocking_iterator_adapter
    assert getattr(loop, "sends_final_with_status", False)


def test_short_answers_arrive_whole_in_order(channel: grpc.Channel, server: RunningServer
                                             ) -> None:
    """Answers known at once (one action result, none, a constant's schema and row, a
    catalog listing) arrive complete, in order, with an OK status."""
    created = _action(channel, "CreatePreparedStatement", pack(
        sql.ActionCreatePreparedStatementRequest(query="SELECT 1 AS one, 'x' AS x")))
    assert len(created) == 1
    handle = sql.ActionCreatePreparedStatementResult()
    assert any_pb2.Any.FromString(created[0].body).Unpack(handle)
    command = pack(sql.CommandPreparedStatementQuery(
        prepared_statement_handle=handle.prepared_statement_handle))
    info = _flight_info(channel, command)
    assert len(_do_get(channel, info.endpoint[0].ticket)) == 2  # the schema, the row
    client = flight.connect(f"grpc://127.0.0.1:{server.port}")
    again = client.get_flight_info(flight.FlightDescriptor.for_command(command), bearer(TOKEN))
    rows = client.do_get(again.endpoints[0].ticket, bearer(TOKEN)).read_all().to_pylist()
    assert rows == [{"one": 1, "x": "x"}]
    client.close()
    assert _action(channel, "ClosePreparedStatement", pack(
        sql.ActionClosePreparedStatementRequest(
            prepared_statement_handle=handle.prepared_statement_handle))) == []
    catalogs = _flight_info(channel, pack(sql.CommandGetCatalogs()))
    listed = _do_get(channel, catalogs.endpoint[0].ticket)
    assert len(listed) == 2 and listed[1].data_body


@pytest.fixture()
def in_process_port() -> Iterator[int]:
    """The Flight SQL service over an in-memory catalog, served in this process, so that
    grpcio's sending can be watched."""
    engine = SqlEngine(InMemoryCatalog(), EngineConfig())
    authenticator = Authenticator(AuthConfig())
    service = FlightService(FlightSqlHandler(engine, 1 << 20), authenticator.authenticate)
    server, port = start_flight_server(service, "127.0.0.1", 0, TransportConfig())
    try:
        yield port
    finally:
        server.stop(grace=None).wait()
        authenticator.close()
        engine.close()


def test_a_final_message_is_not_sent_alone(in_process_port: int,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """grpcio sends a message alone (and waits for it) through `_send_response`: a
    one-result action then sends none that way, a constant's DoGet only its schema."""
    sent_alone: list[bytes] = []
    send_alone = grpc_internals._send_response

    def counted(rpc_event: object, state: object, serialized: bytes) -> bool:
        sent_alone.append(serialized)
        return bool(send_alone(rpc_event, state, serialized))

    monkeypatch.setattr(grpc_internals, "_send_response", counted)
    with grpc.insecure_channel(f"127.0.0.1:{in_process_port}") as opened:
        created = _action(opened, "CreatePreparedStatement", pack(
            sql.ActionCreatePreparedStatementRequest(query="SELECT 1 AS one")))
        assert len(created) == 1 and sent_alone == []
        handle = sql.ActionCreatePreparedStatementResult()
        assert any_pb2.Any.FromString(created[0].body).Unpack(handle)
        info = _flight_info(opened, pack(sql.CommandPreparedStatementQuery(
            prepared_statement_handle=handle.prepared_statement_handle)))
        messages = _do_get(opened, info.endpoint[0].ticket)
    assert len(messages) == 2 and messages[1].data_body
    assert len(sent_alone) == 1  # the schema; the row went with the status


def test_other_grpcio_internals_leave_grpcio_as_it_is(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    """Where grpcio's loop is not the one known, nothing is replaced, and a Final
    message is an ordinary one to the serializer."""
    def different(rpc_event: object, state: object) -> None:
        raise AssertionError("never called")

    monkeypatch.setattr(grpc_internals, "_send_message_callback_to_blocking_iterator_adapter",
                        different)
    assert not final_message.send_final_with_status()
    assert grpc_internals._send_message_callback_to_blocking_iterator_adapter is different
    result = fpb.Result(body=b"a")
    assert message_bytes(Final(result)) == result.SerializeToString()
    assert message_bytes(Final(b"raw")) == b"raw"
    assert list(with_final([])) == []
    assert list(with_final([b"a", b"b"])) == [b"a", Final(b"b")]
