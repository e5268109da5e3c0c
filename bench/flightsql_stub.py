"""A Flight SQL responder that does no work, on pyarrow's C++ Flight server: the floor a
client's round trips cost before any server work (for bench.latency), and, serving a
table, the bare server ADBC fetches from in bench.streaming.

It answers every statement with the same result (by default one row), and GetSqlInfo
(which the ADBC driver asks for when it connects) with every value, and keeps no state.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.flight as flight
from google.protobuf import any_pb2

from flight_server.generated import FlightSql_pb2 as sql
from flight_server.sql_info import SCHEMA as SQL_INFO_SCHEMA
from flight_server.sql_info import sql_info_batch

_RESULT = pa.table({"1": pa.array([1], pa.int64())})


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
            yield _packed(sql.ActionCreatePreparedStatementResult(
                prepared_statement_handle=b"stub",
                dataset_schema=self._schema.serialize().to_pybytes(),
                parameter_schema=pa.schema([]).serialize().to_pybytes()))

    def get_flight_info(self, context: flight.ServerCallContext,
                        descriptor: flight.FlightDescriptor) -> flight.FlightInfo:
        if _is_sql_info(descriptor.command):
            return flight.FlightInfo(SQL_INFO_SCHEMA, descriptor,
                                     [flight.FlightEndpoint(b"sql-info", [])], -1, -1)
        return flight.FlightInfo(self._schema, descriptor,
                                 [flight.FlightEndpoint(b"result", [])], -1, -1)

    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket
               ) -> flight.FlightDataStream:
        if ticket.ticket == b"sql-info":
            batch = sql_info_batch([], "stub", read_only=True)
            return flight.RecordBatchStream(pa.Table.from_batches([batch]))
        return flight.RecordBatchStream(self._result())


def serve_until_stopped(server: flight.FlightServerBase, ready: multiprocessing.Queue,
                        stop: multiprocessing.synchronize.Event) -> None:
    """Report `server`'s port on `ready`, serve until `stop` is set, then shut it down
    (the body of a spawned server process)."""
    ready.put(server.port)
    stop.wait()
    server.shutdown()


def _serve(ready: multiprocessing.Queue, stop: multiprocessing.synchronize.Event) -> None:
    serve_until_stopped(FlightSqlStub("grpc://127.0.0.1:0"), ready, stop)


@contextmanager
def running_stub() -> Iterator[int]:
    """The stub in its own process; yields its port."""
    context = multiprocessing.get_context("spawn")
    ready: multiprocessing.Queue = context.Queue()
    stop = context.Event()
    process = context.Process(target=_serve, args=(ready, stop), daemon=True)
    process.start()
    try:
        yield ready.get(timeout=60)
    finally:
        stop.set()
        process.join(timeout=10)
        if process.is_alive():
            process.terminate()
            process.join()
