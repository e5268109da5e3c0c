"""The Flight SQL service: maps Flight SQL commands and actions to their handlers."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import pyarrow as pa

from engine import PlannedQuery, SqlEngine
from engine.arrow_types import ResultBatch
from engine.writes import COUNT_SCHEMA
from flight_server.auth import EXECUTOR_IDENTITY
from flight_server.cluster import HEARTBEAT, METRICS, REGISTER, REPORT, CoordinatorService
from flight_server.errors import InvalidArgument, PermissionDenied, Unimplemented
from flight_server.generated import Flight_pb2 as fpb
from flight_server.generated import FlightSql_pb2 as sql
from flight_server.ingest import ingest
from flight_server.ipc import PutStream
from flight_server.metadata import METADATA_COMMANDS, Metadata
from flight_server.prepared import PreparedStatements
from flight_server.protocol import command_of, flight_info, pack, parse_plain, unpack
from flight_server.sessions import SessionStore
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
SET_SESSION_OPTIONS = "SetSessionOptions"
GET_SESSION_OPTIONS = "GetSessionOptions"
CANCEL_FLIGHT_INFO = "CancelFlightInfo"
CONTROL_ACTIONS = (REGISTER, HEARTBEAT, REPORT, METRICS)
CANCEL_QUERY = "CancelQuery"  # Flight SQL's older name, still sent by some clients

_ACTIONS = [
    (CREATE_PREPARED, "Create a prepared statement; body: ActionCreatePreparedStatementRequest"),
    (CLOSE_PREPARED, "Close a prepared statement; body: ActionClosePreparedStatementRequest"),
    (SET_SESSION_OPTIONS, "Set session options catalog, schema, dialect; "
                          "body: SetSessionOptionsRequest"),
    (GET_SESSION_OPTIONS, "Get session options; body: GetSessionOptionsRequest"),
    (CLOSE_SESSION, "Close the client's session; body: CloseSessionRequest"),
    (CANCEL_FLIGHT_INFO, "Cancel a running query; body: CancelFlightInfoRequest"),
]


class FlightSqlHandler:
    """Flight SQL over one SqlEngine (the embedded runtime)."""

    def __init__(self, engine: SqlEngine, max_upload_bytes: int,
                 cluster: CoordinatorService | None = None, insecure_cluster: bool = False
                 ) -> None:
        self.engine = engine
        self._max_upload_bytes = max_upload_bytes
        self._cluster = cluster
        self._insecure_cluster = insecure_cluster
        self._statements = Statements(engine, cluster)
        self._prepared = PreparedStatements(max_upload_bytes)
        self._metadata = Metadata(engine, server_version())
        self._sessions = SessionStore(engine)

    def _plan(self, call: Call, command: object) -> PlannedQuery:
        """A planned query; a write (DDL/DML) runs here, at planning, never at DoGet."""
        if isinstance(command, sql.CommandStatementQuery):
            if command.HasField("transaction_id"):
                raise Unimplemented("transactions are not supported")
            return self._sessions.session_for(call).execute(command.query, None, call.is_cancelled)
        if isinstance(command, sql.CommandPreparedStatementQuery):
            return self._prepared.plan(command, call.is_cancelled)
        raise Unimplemented(f"{type(command).__name__} is not supported by this server")

    def get_flight_info(self, call: Call, descriptor: fpb.FlightDescriptor) -> fpb.FlightInfo:
        command = command_of(descriptor)
        if isinstance(command, METADATA_COMMANDS):
            # A metadata command is its own ticket.
            return flight_info(self._metadata.schema_for(command), descriptor, descriptor.cmd)
        if self._cluster is None:
            self.engine.admission.refuse_if_full()
        return self._statements.flight_info(self._plan(call, command), descriptor,
                                            call.is_cancelled)

    def answers_at_once(self, method: str, request: Any) -> bool:
        """Quick answers: a metadata command's FlightInfo (its schema), preparing a
        constant planned before, a prepared constant's FlightInfo, a constant's rows,
        closing a prepared statement. A text that another dialect translates, or a plan
        dropped in between, then plans a table-free constant there: CPU only, no I/O."""
        if method == "GetFlightInfo":
            command = command_of(request)
            if isinstance(command, METADATA_COMMANDS):
                return True
            if isinstance(command, sql.CommandPreparedStatementQuery):
                kept = self._prepared.kept_constant(command)
                return kept is not None and self._statements.answered_at_planning(kept)
        elif method == "DoGet":
            ticket = unpack(request.ticket)
            return (isinstance(ticket, sql.TicketStatementQuery)
                    and self._statements.rows_known(ticket))
        elif method == "DoAction" and request.type in (CREATE_PREPARED, CLOSE_PREPARED):
            action = unpack(request.body)
            if isinstance(action, sql.ActionCreatePreparedStatementRequest):
                return self.engine.constant_query(action.query) is not None
            return isinstance(action, sql.ActionClosePreparedStatementRequest)
        return False

    def get_schema(self, call: Call, descriptor: fpb.FlightDescriptor) -> pa.Schema:
        command = command_of(descriptor)
        if isinstance(command, METADATA_COMMANDS):
            return self._metadata.schema_for(command)
        if isinstance(command, sql.CommandStatementQuery):
            session = self._sessions.session_for(call)
            if session.write_statement(command.query) is not None:
                return COUNT_SCHEMA  # describing a write must not run it
            return session.plan(command.query).schema
        if isinstance(command, sql.CommandPreparedStatementQuery):
            return self._prepared.result_schema(command)
        return self._plan(call, command).schema

    def do_get(self, call: Call, ticket: bytes) -> tuple[pa.Schema, Iterable[ResultBatch]]:
        command = unpack(ticket)
        if isinstance(command, sql.TicketStatementQuery):
            return self._statements.stream(command, call.is_cancelled)
        if isinstance(command, METADATA_COMMANDS):
            rows = self._metadata.rows_for(command)
            return rows.schema, rows.to_batches()
        raise InvalidArgument(f"{type(command).__name__} is not a ticket")

    def do_put(self, call: Call, upload: PutStream) -> Iterator[bytes]:
        command = command_of(upload.descriptor)
        # DoPut results travel as plain messages, not wrapped in Any.
        if isinstance(command, sql.CommandPreparedStatementQuery):
            yield self._prepared.bind(command, upload, call.is_cancelled).SerializeToString()
        elif isinstance(command, sql.CommandStatementUpdate):
            yield self._statement_update(call, command).SerializeToString()
        elif isinstance(command, sql.CommandStatementIngest):
            session = (self._sessions.persistent_session_for(call) if command.temporary
                       else self._sessions.session_for(call))
            count = ingest(session, command, upload, self._max_upload_bytes, call.is_cancelled)
            yield sql.DoPutUpdateResult(record_count=count).SerializeToString()
        elif isinstance(command, sql.CommandPreparedStatementUpdate):
            count = self._prepared.update(command, upload, call.is_cancelled)
            yield sql.DoPutUpdateResult(record_count=count).SerializeToString()
        else:
            raise Unimplemented(f"{type(command).__name__} is not supported by this server")

    def _statement_update(
        self, call: Call, command: sql.CommandStatementUpdate
    ) -> sql.DoPutUpdateResult:
        if command.HasField("transaction_id"):
            raise Unimplemented("transactions are not supported")
        session = self._sessions.session_for(call)
        statement = session.write_statement(command.query)
        if statement is None:
            raise InvalidArgument("CommandStatementUpdate takes DDL or DML, not a query")
        count = session.write(statement, command.query, None, call.is_cancelled)
        return sql.DoPutUpdateResult(record_count=count)

    def do_action(self, call: Call, kind: str, body: bytes) -> list[bytes]:
        if kind in CONTROL_ACTIONS:
            if self._cluster is None:
                raise Unimplemented("this server runs queries embedded; it has no executors")
            if call.identity != EXECUTOR_IDENTITY and not self._insecure_cluster:
                raise PermissionDenied("executor control calls need the executor task token")
            if kind == METRICS:
                counters = {**self._cluster.metrics(), "sessions": self._sessions.count()}
                return [json.dumps(counters).encode()]
            return [self._cluster.control(kind, body)]
        if kind == CREATE_PREPARED:
            request = unpack(body)
            if not isinstance(request, sql.ActionCreatePreparedStatementRequest):
                raise InvalidArgument("CreatePreparedStatement needs its request message")
            if request.HasField("transaction_id"):
                raise Unimplemented("transactions are not supported")
            if self._cluster is None:
                self.engine.admission.refuse_if_full()
            return [pack(self._prepared.create(self._sessions.session_for(call), request))]
        if kind == CLOSE_PREPARED:
            request = unpack(body)
            if not isinstance(request, sql.ActionClosePreparedStatementRequest):
                raise InvalidArgument("ClosePreparedStatement needs its request message")
            self._prepared.close(request)
            return []
        # Flight's session actions carry plain (not Any-wrapped) messages.
        if kind == SET_SESSION_OPTIONS:
            request = parse_plain(fpb.SetSessionOptionsRequest, body)
            assert isinstance(request, fpb.SetSessionOptionsRequest)
            return [self._sessions.set_options(call, request).SerializeToString()]
        if kind == GET_SESSION_OPTIONS:
            parse_plain(fpb.GetSessionOptionsRequest, body)
            return [self._sessions.get_options(call).SerializeToString()]
        if kind == CANCEL_FLIGHT_INFO:
            cancel = parse_plain(fpb.CancelFlightInfoRequest, body)
            assert isinstance(cancel, fpb.CancelFlightInfoRequest)
            status = (fpb.CANCEL_STATUS_CANCELLED if self._statements.cancel(cancel.info)
                      else fpb.CANCEL_STATUS_NOT_CANCELLABLE)
            return [fpb.CancelFlightInfoResult(status=status).SerializeToString()]
        if kind == CANCEL_QUERY:
            legacy = unpack(body)
            if not isinstance(legacy, sql.ActionCancelQueryRequest):
                raise InvalidArgument("CancelQuery needs its request message")
            info = parse_plain(fpb.FlightInfo, legacy.info)
            assert isinstance(info, fpb.FlightInfo)
            result = (sql.ActionCancelQueryResult.CANCEL_RESULT_CANCELLED
                      if self._statements.cancel(info)
                      else sql.ActionCancelQueryResult.CANCEL_RESULT_NOT_CANCELLABLE)
            return [pack(sql.ActionCancelQueryResult(result=result))]
        if kind == CLOSE_SESSION:
            parse_plain(fpb.CloseSessionRequest, body)
            return [self._sessions.close(call).SerializeToString()]
        raise Unimplemented(f"unknown action type: {kind[:100]}")

    def list_actions(self) -> list[tuple[str, str]]:
        return list(_ACTIONS)
