"""Prepared statements: create (schema without executing), bind parameters, close."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

from engine import PlannedQuery, Session
from engine.session import NO_COLUMNS, planned_again
from engine.writes import COUNT_SCHEMA
from flight_server.errors import InvalidArgument, NotFound
from flight_server.generated import FlightSql_pb2 as sql
from flight_server.handles import HandleStore
from flight_server.ipc import PutStream, schema_bytes

_PREPARED_TTL_S = 3600.0
# A kept plan holds its DataFusion context (about 80 KB for a two-table join at TPC-H
# SF 1): the most recently prepared statements keep theirs, older ones plan each time.
_MAX_KEPT_PLANS = 256


@dataclass
class _KeptPlan:
    query: PlannedQuery
    snapshot: tuple[object, ...]


@dataclass
class PreparedStatement:
    session: Session
    query: str
    dataset_schema: pa.Schema
    parameter_schema: pa.Schema
    parameters: pa.RecordBatch | None = field(default=None)
    kept: _KeptPlan | None = field(default=None)

    def kept_plan(self) -> PlannedQuery | None:
        """The plan made at prepare, for this execution, while it holds: no parameters
        bound and the same tables at the same versions (written constants name none).
        Parsing and planning again would cost more than checking (SELECT 1 through ADBC:
        0.1 ms of the server's work)."""
        kept = self.kept
        if kept is None or self.parameters is not None:
            return None
        if kept.query.rows is None and self.session.snapshot(self.query) != kept.snapshot:
            return None
        return planned_again(kept.query)


class PreparedStatements:
    def __init__(self, max_upload_bytes: int) -> None:
        self._max_upload_bytes = max_upload_bytes
        self._statements: HandleStore[PreparedStatement] = HandleStore(
            "prepared statement", _PREPARED_TTL_S
        )
        self._keeping: deque[PreparedStatement] = deque()
        self._keeping_lock = threading.Lock()

    def create(
        self, session: Session, request: sql.ActionCreatePreparedStatementRequest
    ) -> sql.ActionCreatePreparedStatementResult:
        if session.write_statement(request.query) is not None:
            # Writes run at execution, never at prepare; an empty dataset schema tells
            # the JDBC driver to execute through DoPut.
            statement = PreparedStatement(session, request.query, NO_COLUMNS, NO_COLUMNS)
        else:
            snapshot = session.snapshot(request.query)
            planned = session.plan(request.query)
            parameters = session.parameter_schema(planned)
            statement = PreparedStatement(session, request.query, planned.schema, parameters)
            if snapshot is not None and not len(parameters) and (
                    planned.context is not None or planned.rows is not None):
                self._keep(statement, _KeptPlan(planned, snapshot))
        handle = self._statements.add(statement)
        return sql.ActionCreatePreparedStatementResult(
            prepared_statement_handle=handle,
            dataset_schema=schema_bytes(statement.dataset_schema),
            parameter_schema=schema_bytes(statement.parameter_schema),
        )

    def _keep(self, statement: PreparedStatement, plan: _KeptPlan) -> None:
        statement.kept = plan
        with self._keeping_lock:
            self._keeping.append(statement)
            if len(self._keeping) > _MAX_KEPT_PLANS:
                self._keeping.popleft().kept = None

    def bind(
        self, command: sql.CommandPreparedStatementQuery, upload: PutStream,
        is_cancelled: Callable[[], bool],
    ) -> sql.DoPutPreparedStatementResult:
        statement = self._statements.get(command.prepared_statement_handle)
        table = upload.read_all(self._max_upload_bytes, is_cancelled)
        if table.num_rows == 0:
            statement.parameters = None
        else:
            batches = table.combine_chunks().to_batches()
            if len(batches) != 1 or table.num_rows != 1:
                raise InvalidArgument(
                    f"a query takes exactly one row of parameters, got {table.num_rows}"
                )
            statement.parameters = batches[0]
        return sql.DoPutPreparedStatementResult(
            prepared_statement_handle=command.prepared_statement_handle
        )

    def plan(
        self, command: sql.CommandPreparedStatementQuery, is_cancelled: Callable[[], bool]
    ) -> PlannedQuery:
        """The query planned with its bound parameters, or a write run now."""
        statement = self._statements.get(command.prepared_statement_handle)
        kept = statement.kept_plan()
        if kept is not None:
            return kept
        return statement.session.execute(statement.query, statement.parameters, is_cancelled)

    def kept_constant(self, command: sql.CommandPreparedStatementQuery) -> PlannedQuery | None:
        """The statement's kept plan if it is open, has no parameters bound and its rows
        were made at planning (written constants): what `plan` then returns as it is."""
        try:
            statement = self._statements.get(command.prepared_statement_handle)
        except NotFound:
            return None
        kept = statement.kept
        return statement.kept_plan() if kept is not None and kept.query.rows is not None else None

    def update(
        self,
        command: sql.CommandPreparedStatementUpdate,
        upload: PutStream,
        is_cancelled: Callable[[], bool],
    ) -> int:
        """Run a prepared write once per uploaded parameter row (once if none)."""
        statement = self._statements.get(command.prepared_statement_handle)
        write = statement.session.write_statement(statement.query)
        if write is None:
            raise InvalidArgument("a prepared query cannot be executed as an update")
        rows = upload.read_all(self._max_upload_bytes, is_cancelled)
        if rows.num_columns == 0 or rows.num_rows == 0:
            bindings: list[pa.RecordBatch | None] = [statement.parameters]
        else:
            table = rows.combine_chunks()
            bindings = [table.slice(i, 1).to_batches()[0] for i in range(table.num_rows)]
        return statement.session.write_many(write, statement.query, bindings, is_cancelled)

    def result_schema(self, command: sql.CommandPreparedStatementQuery) -> pa.Schema:
        """The schema executing would return, without executing (writes are not run)."""
        statement = self._statements.get(command.prepared_statement_handle)
        if statement.session.write_statement(statement.query) is not None:
            return COUNT_SCHEMA
        return statement.session.plan(statement.query, statement.parameters).schema

    def close(self, request: sql.ActionClosePreparedStatementRequest) -> None:
        self._statements.remove(request.prepared_statement_handle).kept = None
