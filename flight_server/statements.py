"""CommandStatementQuery: plan at GetFlightInfo, stream at DoGet."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyarrow as pa

from engine import PlannedQuery, SqlEngine
from flight_server.generated import Flight_pb2 as fpb
from flight_server.generated import FlightSql_pb2 as sql
from flight_server.handles import HandleStore
from flight_server.protocol import flight_info, pack

_QUERY_TTL_S = 600.0


class Statements:
    def __init__(self, engine: SqlEngine) -> None:
        self._engine = engine
        self._planned: HandleStore[PlannedQuery] = HandleStore("statement", _QUERY_TTL_S)

    def flight_info(self, query: PlannedQuery, descriptor: fpb.FlightDescriptor) -> fpb.FlightInfo:
        """Keep `query` for DoGet and describe its one endpoint on this server."""
        handle = self._planned.add(query)
        ticket = pack(sql.TicketStatementQuery(statement_handle=handle))
        return flight_info(query.schema, descriptor, ticket)

    def stream(
        self, ticket: sql.TicketStatementQuery, is_cancelled: Callable[[], bool]
    ) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        handle = ticket.statement_handle
        query = self._planned.get(handle)

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                yield from self._engine.stream(query, is_cancelled)
            finally:
                self._planned.remove_if_present(handle)

        return query.schema, batches()
