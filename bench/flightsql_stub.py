"""A Flight SQL responder that does no work, on pyarrow's C++ Flight server: the floor a
client's round trips cost before any server work (for bench.latency), and, serving a
table, the bare server ADBC fetches from in bench.streaming.

It answers every statement with the same result (by default one row), and GetSqlInfo
(which the ADBC driver asks for when it connects) with every value, and keeps no state.
`NoWorkHandler` gives the same answers on Krishiv's own transport (grpcio with
flight_server.grpc_shortcuts), so bench.latency can tell what the transport costs from
what the server's work costs.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
from google.protobuf import any_pb2

from flight_server.generated import Flight_pb2 as fpb
from flight_server.generated import FlightSql_pb2 as sql
from flight_server.ipc import PutStream
from flight_server.protocol import flight_info
from flight_server.sql_info import SCHEMA as SQL_INFO_SCHEMA
from flight_server.sql_info import sql_info_batch
from flight_server.transport import Call, FlightService, TransportConfig, start_flight_server

_RESULT = pa.table({"1": pa.array([1], pa.int64())})


_SQL_INFO_TICKET = b"sql-info"
_RESULT_TICKET = b"result"


def _prepared(schema: pa.Schema) -> bytes:
    """CreatePreparedStatement's answer: one handle for every statement."""
    return _packed(sql.ActionCreatePreparedStatementResult(
        prepared_statement_handle=b"stub",
        dataset_schema=schema.serialize().to_pybytes(),
        parameter_schema=pa.schema([]).serialize().to_pybytes()))


def _packed(message: sql.ActionCreatePreparedStatementResult) -> bytes:
    wrapper = any_pb2.Any()
    wrapper.Pack(message)
    return wrapper.SerializeToString()


def _is_sql_info(command: bytes) -> bool:
    wrapper = any_pb2.Any()
    wrapper.ParseFromString(command)
    return wrapper.Is(sql.CommandGetSqlInfo.DESCRIPTOR)


Result = Callable[[], pa.Table | pa.RecordBatchReader]


class FlightSqlStub(flight.FlightServerBase):
    def __init__(self, location: str, result: Result = lambda: _RESULT,
                 schema: pa.Schema = _RESULT.schema) -> None:
        super().__init__(location)
        self._result = result
        self._schema = schema

    def do_action(self, context: flight.ServerCallContext, action: flight.Action
                  ) -> Iterator[bytes]:
        if action.type == "CreatePreparedStatement":
            yield _prepared(self._schema)

    def get_flight_info(self, context: flight.ServerCallContext,
                        descriptor: flight.FlightDescriptor) -> flight.FlightInfo:
        if _is_sql_info(descriptor.command):
            return flight.FlightInfo(SQL_INFO_SCHEMA, descriptor,
                                     [flight.FlightEndpoint(_SQL_INFO_TICKET, [])], -1, -1)
        return flight.FlightInfo(self._schema, descriptor,
                                 [flight.FlightEndpoint(_RESULT_TICKET, [])], -1, -1)

    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket
               ) -> flight.FlightDataStream:
        if ticket.ticket == _SQL_INFO_TICKET:
            batch = sql_info_batch([], "stub", read_only=True)
            return flight.RecordBatchStream(pa.Table.from_batches([batch]))
        return flight.RecordBatchStream(self._result())


class NoWorkHandler:
    """The stub's one-row answers as a FlightHandler, for Krishiv's transport: each is
    known at once, so the completion-queue thread answers it (grpc_shortcuts)."""

    def get_flight_info(self, call: Call, descriptor: fpb.FlightDescriptor) -> fpb.FlightInfo:
        if _is_sql_info(descriptor.cmd):
            return flight_info(SQL_INFO_SCHEMA, descriptor, _SQL_INFO_TICKET)
        return flight_info(_RESULT.schema, descriptor, _RESULT_TICKET)

    def get_schema(self, call: Call, descriptor: fpb.FlightDescriptor) -> pa.Schema:
        return _RESULT.schema

    def do_get(self, call: Call, ticket: bytes) -> tuple[pa.Schema, list[pa.RecordBatch]]:
        if ticket == _SQL_INFO_TICKET:
            return SQL_INFO_SCHEMA, [sql_info_batch([], "stub", read_only=True)]
        return _RESULT.schema, _RESULT.to_batches()

    def do_put(self, call: Call, upload: PutStream) -> Iterator[bytes]:
        return iter(())

    def do_action(self, call: Call, kind: str, body: bytes) -> list[bytes]:
        return [_prepared(_RESULT.schema)] if kind == "CreatePreparedStatement" else []

    def list_actions(self) -> list[tuple[str, str]]:
        return []

    def answers_at_once(self, method: str, request: Any) -> bool:
        return True


def serve_until_stopped(server: flight.FlightServerBase, ready: multiprocessing.Queue,
                        stop: multiprocessing.synchronize.Event) -> None:
    """Report `server`'s port on `ready`, serve until `stop` is set, then shut it down
    (the body of a spawned server process)."""
    ready.put(server.port)
    stop.wait()
    server.shutdown()


def _serve(on_krishiv_transport: bool, ready: multiprocessing.Queue,
           stop: multiprocessing.synchronize.Event) -> None:
    if not on_krishiv_transport:
        serve_until_stopped(FlightSqlStub("grpc://127.0.0.1:0"), ready, stop)
        return
    service = FlightService(NoWorkHandler(), lambda headers: ("stub", []))
    server, port = start_flight_server(service, "127.0.0.1", 0, TransportConfig())
    ready.put(port)
    stop.wait()
    server.stop(0)


@contextmanager
def running_stub(on_krishiv_transport: bool = False) -> Iterator[int]:
    """The stub in its own process, on pyarrow's C++ server or on Krishiv's transport;
    yields its port."""
    context = multiprocessing.get_context("spawn")
    ready: multiprocessing.Queue = context.Queue()
    stop = context.Event()
    process = context.Process(target=_serve, args=(on_krishiv_transport, ready, stop),
                              daemon=True)
    process.start()
    try:
        yield ready.get(timeout=60)
    finally:
        stop.set()
        process.join(timeout=10)
        if process.is_alive():
            process.terminate()
            process.join()
