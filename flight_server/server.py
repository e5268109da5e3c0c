"""The Flight SQL service: maps Flight SQL commands and actions to their handlers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version

import pyarrow as pa

from engine import PlannedQuery, SqlEngine
from flight_server.errors import InvalidArgument, Unimplemented
from flight_server.generated import Flight_pb2 as fpb
from flight_server.generated import FlightSql_pb2 as sql
from flight_server.ipc import PutStream
from flight_server.metadata import METADATA_COMMANDS, Metadata
from flight_server.prepared import PreparedStatements
from flight_server.protocol import command_of, flight_info, pack, parse_plain, unpack
from flight_server.statements import Statements
from flight_server.transport import Call

log = logging.getLogger("krishiv.server")


def server_version() -> str:
    try:
        return version("krishiv")
    except PackageNotFoundError:
        return "0.0.0+unknown"


# Action type names of Flight SQL and of Flight's session actions.
CREATE_PREPARED = "CreatePreparedStatement"
CLOSE_PREPARED = "ClosePreparedStatement"
CLOSE_SESSION = "CloseSession"

_ACTIONS = [
    (CREATE_PREPARED, "Create a prepared statement; body: ActionCreatePreparedStatementRequest"),
    (CLOSE_PREPARED, "Close a prepared statement; body: ActionClosePreparedStatementRequest"),
    (CLOSE_SESSION, "Close the client's session; body: CloseSessionRequest"),
]


class FlightSqlHandler:
    """Flight SQL over one SqlEngine (the embedded runtime)."""

    def __init__(self, engine: SqlEngine) -> None:
        self.engine = engine
        self._statements = Statements(engine)
        self._prepared = PreparedStatements()
        self._metadata = Metadata(engine, server_version())

    def _plan(self, command: object) -> PlannedQuery:
        if isinstance(command, sql.CommandStatementQuery):
            if command.HasField("transaction_id"):
                raise Unimplemented("transactions are not supported")
            return self.engine.session().plan(command.query)
        if isinstance(command, sql.CommandPreparedStatementQuery):
            return self._prepared.plan(command)
        raise Unimplemented(f"{type(command).__name__} is not supported by this server")

    def get_flight_info(self, call: Call, descriptor: fpb.FlightDescriptor) -> fpb.FlightInfo:
        command = command_of(descriptor)
        if isinstance(command, METADATA_COMMANDS):
            # A metadata command is its own ticket.
            return flight_info(self._metadata.schema_for(command), descriptor, descriptor.cmd)
        return self._statements.flight_info(self._plan(command), descriptor)

    def get_schema(self, call: Call, descriptor: fpb.FlightDescriptor) -> pa.Schema:
        command = command_of(descriptor)
        if isinstance(command, METADATA_COMMANDS):
            return self._metadata.schema_for(command)
        return self._plan(command).schema

    def do_get(self, call: Call, ticket: bytes) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        command = unpack(ticket)
        if isinstance(command, sql.TicketStatementQuery):
            return self._statements.stream(command, call.is_cancelled)
        if isinstance(command, METADATA_COMMANDS):
            rows = self._metadata.rows_for(command)
            return rows.schema, iter(rows.to_batches())
        raise InvalidArgument(f"{type(command).__name__} is not a ticket")

    def do_put(self, call: Call, upload: PutStream) -> Iterator[bytes]:
        command = command_of(upload.descriptor)
        if isinstance(command, sql.CommandPreparedStatementQuery):
            # DoPut results travel as plain messages, not wrapped in Any.
            yield self._prepared.bind(command, upload).SerializeToString()
            return
        raise Unimplemented(
            f"{type(command).__name__} is not supported: this server is read-only for now"
        )

    def do_action(self, call: Call, kind: str, body: bytes) -> Iterator[bytes]:
        if kind == CREATE_PREPARED:
            request = unpack(body)
            if not isinstance(request, sql.ActionCreatePreparedStatementRequest):
                raise InvalidArgument("CreatePreparedStatement needs its request message")
            if request.HasField("transaction_id"):
                raise Unimplemented("transactions are not supported")
            return iter([pack(self._prepared.create(self.engine.session(), request))])
        if kind == CLOSE_PREPARED:
            request = unpack(body)
            if not isinstance(request, sql.ActionClosePreparedStatementRequest):
                raise InvalidArgument("ClosePreparedStatement needs its request message")
            self._prepared.close(request)
            return iter([])
        if kind == CLOSE_SESSION:
            parse_plain(fpb.CloseSessionRequest, body)
            closed = fpb.CloseSessionResult(status=fpb.CloseSessionResult.CLOSED)
            return iter([closed.SerializeToString()])
        raise Unimplemented(f"unknown action type: {kind[:100]}")

    def list_actions(self) -> list[tuple[str, str]]:
        return list(_ACTIONS)
