"""grpcio with fewer thread hand-offs (flight_server.grpc_shortcuts), over real gRPC."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import grpc
import pyarrow.flight as flight
import pytest
from google.protobuf import any_pb2
from grpc import _server as grpc_internals

from catalog import InMemoryCatalog
from engine import EngineConfig, SqlEngine
from flight_server import grpc_shortcuts
from flight_server.auth import Authenticator
from flight_server.config import AuthConfig
from flight_server.generated import Flight_pb2 as fpb
from flight_server.generated import FlightSql_pb2 as sql
from flight_server.grpc_shortcuts import (
    Final,
    answer_at_once,
    message_bytes,
    send_final_with_status,
    with_final,
)
from flight_server.protocol import pack
from flight_server.server import FlightSqlHandler
from flight_server.transport import (
    SERVICE,
    Call,
    FlightHandler,
    FlightService,
    TransportConfig,
    start_flight_server,
)
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
    """The grpcio this project installs has the internals grpc_shortcuts was written
    against (if a new grpcio changes them, short answers still go out, one hand-off
    slower: this test says so)."""
    assert send_final_with_status()
    loop = grpc_internals._send_message_callback_to_blocking_iterator_adapter
    assert getattr(loop, "sends_final_with_status", False)


def test_the_installed_grpcio_answers_quick_calls_at_once() -> None:
    """Likewise for reading a call's request first and answering quick calls at once."""
    assert answer_at_once()
    assert answer_at_once()  # installed once
    assert isinstance(grpc_internals._handle_unary_stream.__self__, grpc_shortcuts._CallStart)


def test_a_unary_call_without_its_request_is_refused(channel: grpc.Channel) -> None:
    """A client that ends a unary call without sending the request gets UNIMPLEMENTED,
    and the server goes on answering."""
    no_request = channel.stream_unary(f"/{SERVICE}/GetFlightInfo")
    with pytest.raises(grpc.RpcError) as refused:
        no_request(iter(()), metadata=_METADATA)
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "exactly one request message" in str(refused.value.details())
    assert _flight_info(channel, pack(sql.CommandGetCatalogs())).endpoint


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


@dataclass(frozen=True)
class InProcess:
    port: int
    handler: FlightSqlHandler


@pytest.fixture()
def in_process() -> Iterator[InProcess]:
    """The Flight SQL service over an in-memory catalog, served in this process, so that
    grpcio's threads and sending can be watched."""
    engine = SqlEngine(InMemoryCatalog(), EngineConfig())
    authenticator = Authenticator(AuthConfig())
    handler = FlightSqlHandler(engine, 1 << 20)
    service = FlightService(handler, authenticator.authenticate)
    server, port = start_flight_server(service, "127.0.0.1", 0, TransportConfig())
    try:
        yield InProcess(port, handler)
    finally:
        server.stop(grace=None).wait()
        authenticator.close()
        engine.close()


def test_quick_calls_are_answered_on_the_completion_queue_thread(
        in_process: InProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """Preparing a constant planned before, its FlightInfo and rows, and closing it, are
    answered by grpcio's completion-queue thread; a first prepare and a query that is
    not a constant run on the pool's threads. grpcio sends a message alone (and waits
    for it) through `_send_response`: only the messages of the query that is not a
    constant go so."""
    threads: dict[str, list[str]] = {}

    def watched(name: str, run: Any) -> Any:
        def on_thread(*args: Any) -> Any:
            threads.setdefault(name, []).append(threading.current_thread().name)
            return run(*args)

        return on_thread

    for name in ("get_flight_info", "do_get", "do_action"):
        monkeypatch.setattr(in_process.handler, name,
                            watched(name, getattr(in_process.handler, name)))
    sent_alone: list[bytes] = []
    send_alone = grpc_internals._send_response

    def counted(rpc_event: object, state: object, serialized: bytes) -> bool:
        sent_alone.append(serialized)
        return bool(send_alone(rpc_event, state, serialized))

    monkeypatch.setattr(grpc_internals, "_send_response", counted)
    with grpc.insecure_channel(f"127.0.0.1:{in_process.port}") as opened:
        constant = [_prepared_constant(opened) for _ in range(2)]
        assert sent_alone == []
        info = _flight_info(opened, pack(sql.CommandStatementQuery(query="SELECT now()")))
        computed = _do_get(opened, info.endpoint[0].ticket)
    assert all(len(rows) == 2 and rows[1].data_body for rows in [*constant, computed])
    assert len(sent_alone) == 2  # the computed query's schema and row, sent as made
    on_pool = {name: [thread.startswith("flight") for thread in names]
               for name, names in threads.items()}
    # Preparing a constant not planned before, then closing; preparing it again, closing.
    assert on_pool["do_action"] == [True, False, False, False]
    assert on_pool["get_flight_info"] == [False, False, True]  # constants, then now()
    assert on_pool["do_get"] == [False, False, True]


def test_under_load_quick_calls_go_to_the_pool(in_process: InProcess,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """While other calls are in flight, a quick call runs on a pool thread too."""
    release = threading.Event()
    held = threading.Semaphore(0)
    threads: list[str] = []
    flight_info = in_process.handler.get_flight_info

    def held_or_watched(call: Any, descriptor: fpb.FlightDescriptor) -> fpb.FlightInfo:
        if b"held" in descriptor.cmd:
            held.release()
            release.wait(timeout=30)
        else:
            threads.append(threading.current_thread().name)
        return flight_info(call, descriptor)

    monkeypatch.setattr(in_process.handler, "get_flight_info", held_or_watched)
    with grpc.insecure_channel(f"127.0.0.1:{in_process.port}") as opened:
        catalogs = pack(sql.CommandGetCatalogs())
        _flight_info(opened, catalogs)
        holders = [threading.Thread(target=_flight_info, args=(opened, pack(
            sql.CommandStatementQuery(query=f"SELECT 'held' AS h{i}")))) for i in range(3)]
        for holder in holders:
            holder.start()
        try:
            for _ in holders:
                assert held.acquire(timeout=30)
            _flight_info(opened, catalogs)
        finally:
            release.set()
            for holder in holders:
                holder.join(timeout=30)
        _flight_info(opened, catalogs)
    assert [name.startswith("flight") for name in threads] == [False, True, False]


class _Results:
    """A handler answering action `results` with as many results as its body says, all
    quick; every other method unused."""

    def do_action(self, call: Call, kind: str, body: bytes) -> list[bytes]:
        return [str(number).encode() for number in range(int(body))]

    def answers_at_once(self, method: str, request: Any) -> bool:
        return method == "DoAction"

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{name} is not used here")


@pytest.mark.parametrize("reply_headers", [[], [("x-reply", "yes")]])
def test_quick_streams_of_any_length_arrive_whole(reply_headers: list[tuple[str, str]]
                                                  ) -> None:
    """A quick stream's messages go one after another, the last with the status, also
    after the reply headers went first; the server goes on serving."""
    service = FlightService(cast(FlightHandler, _Results()),
                            lambda headers: ("tester", reply_headers))
    server, port = start_flight_server(service, "127.0.0.1", 0, TransportConfig())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as opened:
            for count in (0, 1, 2, 3, 4, 7, 3):
                call = opened.unary_stream(f"/{SERVICE}/DoAction")(
                    fpb.Action(type="results", body=str(count).encode()).SerializeToString(),
                    timeout=10)
                results = [fpb.Result.FromString(raw).body for raw in call]
                assert results == [str(number).encode() for number in range(count)]
                assert call.code() == grpc.StatusCode.OK
                assert dict(call.initial_metadata()).get("x-reply") == (
                    "yes" if reply_headers else None)
    finally:
        server.stop(grace=None).wait()


def _prepared_constant(channel: grpc.Channel) -> list[fpb.FlightData]:
    """Prepare `SELECT 1 AS one`, fetch its rows, close it."""
    created = _action(channel, "CreatePreparedStatement", pack(
        sql.ActionCreatePreparedStatementRequest(query="SELECT 1 AS one")))
    handle = sql.ActionCreatePreparedStatementResult()
    assert any_pb2.Any.FromString(created[0].body).Unpack(handle)
    info = _flight_info(channel, pack(sql.CommandPreparedStatementQuery(
        prepared_statement_handle=handle.prepared_statement_handle)))
    rows = _do_get(channel, info.endpoint[0].ticket)
    assert _action(channel, "ClosePreparedStatement", pack(
        sql.ActionClosePreparedStatementRequest(
            prepared_statement_handle=handle.prepared_statement_handle))) == []
    return rows


def test_other_grpcio_internals_leave_grpcio_as_it_is(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    """Where grpcio's functions are not the ones known, nothing is replaced, and a Final
    message is an ordinary one to the serializer."""
    def different(rpc_event: object, state: object) -> None:
        raise AssertionError("never called")

    monkeypatch.setattr(grpc_internals, "_send_message_callback_to_blocking_iterator_adapter",
                        different)
    assert not grpc_shortcuts.send_final_with_status()
    assert grpc_internals._send_message_callback_to_blocking_iterator_adapter is different
    monkeypatch.setattr(grpc_internals, "_handle_unary_unary", different)
    assert not answer_at_once()
    assert grpc_internals._handle_unary_unary is different
    result = fpb.Result(body=b"a")
    assert message_bytes(Final(result)) == result.SerializeToString()
    assert message_bytes(Final(b"raw")) == b"raw"
    assert list(with_final([])) == []
    assert list(with_final([b"a", b"b"])) == [b"a", Final(b"b")]
