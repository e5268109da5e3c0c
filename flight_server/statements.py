"""CommandStatementQuery: plan at GetFlightInfo, stream at DoGet."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa

from engine import PlannedQuery, SqlEngine
from engine.arrow_types import ResultBatch
from flight_server.cluster import CoordinatorService
from flight_server.errors import InvalidArgument, NotFound
from flight_server.generated import Flight_pb2 as fpb
from flight_server.generated import FlightSql_pb2 as sql
from flight_server.handles import HandleStore
from flight_server.ipc import flight_data, table_messages
from flight_server.protocol import flight_info, pack, unpack

_QUERY_TTL_S = 600.0


@dataclass
class _Pending:
    query: PlannedQuery
    cancelled: bool = False  # set by CancelFlightInfo; a flag, read by the running query


class Statements:
    def __init__(self, engine: SqlEngine, cluster: CoordinatorService | None = None) -> None:
        self._engine = engine
        self._cluster = cluster
        self._planned: HandleStore[_Pending] = HandleStore("statement", _QUERY_TTL_S)

    def flight_info(self, query: PlannedQuery, descriptor: fpb.FlightDescriptor,
                    is_cancelled: Callable[[], bool] = lambda: False) -> fpb.FlightInfo:
        """Keep `query` for DoGet and describe its one endpoint on this server; with
        --direct-results, run it and point at the executors holding the result."""
        if self._cluster is not None and query.frame is not None:
            direct = self._cluster.direct_endpoints(query, is_cancelled)
            if direct is not None:
                return flight_info(query.schema, descriptor, endpoints=direct)
        handle = self._planned.add(_Pending(query))
        ticket = pack(sql.TicketStatementQuery(statement_handle=handle))
        return flight_info(query.schema, descriptor, ticket)

    def stream(
        self, ticket: sql.TicketStatementQuery, is_cancelled: Callable[[], bool]
    ) -> tuple[pa.Schema, Iterable[ResultBatch]]:
        """The result of the statement behind `ticket`: a list when known at planning
        (written constants, a write's count), else batches as they are computed."""
        handle = ticket.statement_handle
        pending = self._planned.get(handle)
        query = pending.query
        if self.answered_at_planning(query):
            assert query.rows is not None
            self._planned.remove_if_present(handle)
            return query.schema, list(table_messages(query.rows))

        def cancelled() -> bool:
            return pending.cancelled or is_cancelled()

        def batches() -> Iterator[ResultBatch]:
            try:
                query = pending.query
                if self._cluster is not None and query.frame is not None:
                    yield from self._cluster.run(query, cancelled)
                else:
                    yield from self._engine.stream(query, cancelled, wire=flight_data)
            finally:
                self._planned.remove_if_present(handle)

        return pending.query.schema, batches()

    def answered_at_planning(self, query: PlannedQuery) -> bool:
        """Whether `query`'s rows were made at planning (a constant's, a write's count) and
        are served as they are: a cluster runs even a constant on its executors."""
        return query.rows is not None and (self._cluster is None or query.frame is None)

    def rows_known(self, ticket: sql.TicketStatementQuery) -> bool:
        """Whether the statement behind `ticket` is open and answered at planning."""
        try:
            return self.answered_at_planning(self._planned.get(ticket.statement_handle).query)
        except NotFound:
            return False

    def cancel(self, info: fpb.FlightInfo) -> bool:
        """Stop the statements behind `info`'s tickets; False if none is known any more."""
        found = False
        for endpoint in info.endpoint:
            try:
                ticket = unpack(endpoint.ticket.ticket)
            except InvalidArgument:
                continue
            if isinstance(ticket, sql.TicketStatementQuery):
                try:
                    self._planned.get(ticket.statement_handle).cancelled = True
                    found = True
                except NotFound:
                    continue
        return found
