"""The Flight SQL endpoint: maps Flight calls and Flight SQL commands to handlers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from engine import PlannedQuery, SqlEngine
from flight_server.auth import Authenticator, AuthMiddlewareFactory, NoOpAuthHandler
from flight_server.errors import InvalidArgument, Unimplemented, client_errors, guarded_stream
from flight_server.generated import FlightSession_pb2 as session_pb
from flight_server.generated import FlightSql_pb2 as sql
from flight_server.metadata import METADATA_COMMANDS, Metadata
from flight_server.prepared import PreparedStatements
from flight_server.protocol import pack, parse_plain, unpack
from flight_server.statements import Statements

log = logging.getLogger("krishiv.server")


def server_version() -> str:
    try:
        return version("krishiv")
    except PackageNotFoundError:
        return "0.0.0+unknown"


# Action type names of Flight SQL and of Flight's session/cancel actions.
CREATE_PREPARED = "CreatePreparedStatement"
CLOSE_PREPARED = "ClosePreparedStatement"
CLOSE_SESSION = "CloseSession"

_ACTIONS = [
    (CREATE_PREPARED, "Create a prepared statement; body: ActionCreatePreparedStatementRequest"),
    (CLOSE_PREPARED, "Close a prepared statement; body: ActionClosePreparedStatementRequest"),
    (CLOSE_SESSION, "Close the client's session; body: CloseSessionRequest"),
]


class FlightSqlServer(flight.FlightServerBase):
    def __init__(
        self, location: str, engine: SqlEngine, authenticator: Authenticator, **kwargs: Any
    ) -> None:
        super().__init__(
            location,
            auth_handler=NoOpAuthHandler(),
            middleware={"auth": AuthMiddlewareFactory(authenticator)},
            **kwargs,
        )
        self.engine = engine
        self._authenticator = authenticator
        self._statements = Statements(engine)
        self._prepared = PreparedStatements()
        self._metadata = Metadata(engine, server_version())

    # -- planning ---------------------------------------------------------------------
    def _plan(self, command: object) -> PlannedQuery:
        if isinstance(command, sql.CommandStatementQuery):
            if command.HasField("transaction_id"):
                raise Unimplemented("transactions are not supported")
            return self.engine.session().plan(command.query)
        if isinstance(command, sql.CommandPreparedStatementQuery):
            return self._prepared.plan(command)
        raise Unimplemented(f"{type(command).__name__} is not supported by this server")

    @client_errors
    def get_flight_info(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.FlightInfo:
        command = self._command(descriptor)
        if isinstance(command, METADATA_COMMANDS):
            ticket = flight.Ticket(descriptor.command)
            schema = self._metadata.schema_for(command)
            return flight.FlightInfo(schema, descriptor, [flight.FlightEndpoint(ticket, [])],
                                     -1, -1)
        return self._statements.flight_info(self._plan(command), descriptor)

    @client_errors
    def get_schema(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.SchemaResult:
        command = self._command(descriptor)
        if isinstance(command, METADATA_COMMANDS):
            return flight.SchemaResult(self._metadata.schema_for(command))
        return flight.SchemaResult(self._plan(command).schema)

    def _command(self, descriptor: flight.FlightDescriptor) -> object:
        if descriptor.descriptor_type != flight.DescriptorType.CMD:
            raise InvalidArgument("only command descriptors are supported")
        return unpack(descriptor.command)

    # -- data -------------------------------------------------------------------------
    @client_errors
    def do_get(
        self, context: flight.ServerCallContext, ticket: flight.Ticket
    ) -> flight.FlightDataStream:
        command = unpack(ticket.ticket)
        if isinstance(command, sql.TicketStatementQuery):
            schema, batches = self._statements.stream(command, context.is_cancelled)
            return flight.GeneratorStream(schema, guarded_stream(batches))
        if isinstance(command, METADATA_COMMANDS):
            return flight.RecordBatchStream(self._metadata.rows_for(command))
        raise InvalidArgument(f"{type(command).__name__} is not a ticket")

    @client_errors
    def do_put(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        command = self._command(descriptor)
        if isinstance(command, sql.CommandPreparedStatementQuery):
            result = self._prepared.bind(command, reader)
            # DoPut results travel as plain messages, not wrapped in Any.
            writer.write(pa.py_buffer(result.SerializeToString()))
            return
        raise Unimplemented(
            f"{type(command).__name__} is not supported: this server is read-only for now"
        )

    # -- actions ----------------------------------------------------------------------
    @client_errors
    def do_action(
        self, context: flight.ServerCallContext, action: flight.Action
    ) -> Iterator[bytes]:
        body = action.body.to_pybytes() if action.body is not None else b""
        if action.type == CREATE_PREPARED:
            request = unpack(body)
            if not isinstance(request, sql.ActionCreatePreparedStatementRequest):
                raise InvalidArgument("CreatePreparedStatement needs its request message")
            if request.HasField("transaction_id"):
                raise Unimplemented("transactions are not supported")
            result = self._prepared.create(self.engine.session(), request)
            return iter([pack(result)])
        if action.type == CLOSE_PREPARED:
            request = unpack(body)
            if not isinstance(request, sql.ActionClosePreparedStatementRequest):
                raise InvalidArgument("ClosePreparedStatement needs its request message")
            self._prepared.close(request)
            return iter([])
        if action.type == CLOSE_SESSION:
            parse_plain(session_pb.CloseSessionRequest, body)
            closed = session_pb.CloseSessionResult(status=session_pb.CloseSessionResult.CLOSED)
            return iter([closed.SerializeToString()])
        raise Unimplemented(f"unknown action type: {action.type[:100]}")

    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        return list(_ACTIONS)

    def shutdown(self) -> None:
        super().shutdown()
        self._authenticator.close()
