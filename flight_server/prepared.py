"""Prepared statements: create (schema without executing), bind parameters, close."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

from engine import PlannedQuery, Session
from engine.writes import COUNT_SCHEMA
from flight_server.errors import InvalidArgument
from flight_server.generated import FlightSql_pb2 as sql
from flight_server.handles import HandleStore
from flight_server.ipc import PutStream, schema_bytes

_PREPARED_TTL_S = 3600.0
# How long the plan made at prepare may serve the first execution. Clients prepare and
# execute in one go (ADBC's execute does both); a plan fixes now() when it is made, so a
# later execution plans afresh.
_FIRST_PLAN_S = 1.0


@dataclass
class _FirstPlan:
    query: PlannedQuery
    snapshot: tuple[object, ...]
    until: float


@dataclass
class PreparedStatement:
    session: Session
    query: str
    dataset_schema: pa.Schema
    parameter_schema: pa.Schema
    parameters: pa.RecordBatch | None = field(default=None)
    first_plan: _FirstPlan | None = field(default=None)

    def take_first_plan(self) -> PlannedQuery | None:
        """The plan made at prepare, once, if it still holds: executed soon after, with no
        parameters, over the same table versions."""
        first, self.first_plan = self.first_plan, None
        if (first is None or self.parameters is not None
                or time.monotonic() > first.until
                or self.session.snapshot(self.query) != first.snapshot):
            return None
        return first.query


class PreparedStatements:
    def __init__(self, max_upload_bytes: int) -> None:
        self._max_upload_bytes = max_upload_bytes
        self._statements: HandleStore[PreparedStatement] = HandleStore(
            "prepared statement", _PREPARED_TTL_S
        )

    def create(
        self, session: Session, request: sql.ActionCreatePreparedStatementRequest
    ) -> sql.ActionCreatePreparedStatementResult:
        if session.write_statement(request.query) is not None:
            # Writes run at execution, never at prepare; an empty dataset schema tells
            # the JDBC driver to execute through DoPut.
            statement = PreparedStatement(session, request.query, pa.schema([]), pa.schema([]))
        else:
            snapshot = session.snapshot(request.query)
            planned = session.plan(request.query)
            parameters = session.parameter_schema(planned)
            statement = PreparedStatement(session, request.query, planned.schema, parameters)
            if snapshot is not None and not len(parameters):
                statement.first_plan = _FirstPlan(planned, snapshot,
                                                  time.monotonic() + _FIRST_PLAN_S)
        handle = self._statements.add(statement)
        return sql.ActionCreatePreparedStatementResult(
            prepared_statement_handle=handle,
            dataset_schema=schema_bytes(statement.dataset_schema),
            parameter_schema=schema_bytes(statement.parameter_schema),
        )

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
        reused = statement.take_first_plan()
        if reused is not None:
            return reused
        return statement.session.execute(statement.query, statement.parameters, is_cancelled)

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
        self._statements.remove(request.prepared_statement_handle)
