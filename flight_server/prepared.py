"""Prepared statements: create (schema without executing), bind parameters, close."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from engine import PlannedQuery, Session
from flight_server.errors import InvalidArgument
from flight_server.generated import FlightSql_pb2 as sql
from flight_server.handles import HandleStore
from flight_server.ipc import PutStream, schema_bytes

_PREPARED_TTL_S = 3600.0


@dataclass
class PreparedStatement:
    session: Session
    query: str
    dataset_schema: pa.Schema
    parameter_schema: pa.Schema
    parameters: pa.RecordBatch | None = field(default=None)


class PreparedStatements:
    def __init__(self) -> None:
        self._statements: HandleStore[PreparedStatement] = HandleStore(
            "prepared statement", _PREPARED_TTL_S
        )

    def create(
        self, session: Session, request: sql.ActionCreatePreparedStatementRequest
    ) -> sql.ActionCreatePreparedStatementResult:
        planned = session.plan(request.query)
        parameters = session.parameter_schema(request.query)
        statement = PreparedStatement(session, request.query, planned.schema, parameters)
        handle = self._statements.add(statement)
        return sql.ActionCreatePreparedStatementResult(
            prepared_statement_handle=handle,
            dataset_schema=schema_bytes(planned.schema),
            parameter_schema=schema_bytes(parameters),
        )

    def bind(
        self, command: sql.CommandPreparedStatementQuery, upload: PutStream
    ) -> sql.DoPutPreparedStatementResult:
        statement = self._statements.get(command.prepared_statement_handle)
        table = upload.read_all()
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

    def plan(self, command: sql.CommandPreparedStatementQuery) -> PlannedQuery:
        statement = self._statements.get(command.prepared_statement_handle)
        return statement.session.plan(statement.query, statement.parameters)

    def close(self, request: sql.ActionClosePreparedStatementRequest) -> None:
        self._statements.remove(request.prepared_statement_handle)
