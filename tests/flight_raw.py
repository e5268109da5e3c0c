"""Raw pyarrow Flight calls speaking Flight SQL, as the JDBC driver does."""

from __future__ import annotations

import base64

import pyarrow as pa
import pyarrow.flight as flight
from google.protobuf import any_pb2
from google.protobuf.message import Message

from flight_server.generated import FlightSql_pb2 as sql
from flight_server.protocol import pack


def bearer(token: str) -> flight.FlightCallOptions:
    return flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {token}".encode())])


def basic_header(user: str, password: str, pad: bool = True) -> bytes:
    encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Basic {encoded if pad else encoded.rstrip('=')}".encode()


def fetch(client: flight.FlightClient, command: Message, options: flight.FlightCallOptions
          ) -> tuple[flight.FlightInfo, pa.Table]:
    """GetFlightInfo for `command`, then DoGet on every endpoint."""
    info = client.get_flight_info(flight.FlightDescriptor.for_command(pack(command)), options)
    tables = [client.do_get(ep.ticket, options).read_all() for ep in info.endpoints]
    return info, pa.concat_tables(tables) if tables else info.schema.empty_table()


def action(client: flight.FlightClient, kind: str, request: Message,
           options: flight.FlightCallOptions) -> list[bytes]:
    results = client.do_action(flight.Action(kind, pack(request)), options)
    return [r.body.to_pybytes() for r in results]


def create_prepared(client: flight.FlightClient, query: str, options: flight.FlightCallOptions
                    ) -> sql.ActionCreatePreparedStatementResult:
    (body,) = action(client, "CreatePreparedStatement",
                     sql.ActionCreatePreparedStatementRequest(query=query), options)
    wrapper = any_pb2.Any.FromString(body)
    result = sql.ActionCreatePreparedStatementResult()
    assert wrapper.Unpack(result)
    return result
