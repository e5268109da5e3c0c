"""Raw pyarrow Flight calls speaking Flight SQL, as the JDBC driver does."""

from __future__ import annotations

import base64

import grpc
import pyarrow as pa
import pyarrow.flight as flight
from google.protobuf import any_pb2
from google.protobuf.message import Message

from flight_server.generated import Flight_pb2 as fpb
from flight_server.generated import FlightSql_pb2 as sql
from flight_server.protocol import pack

_SERVICE = "/arrow.flight.protocol.FlightService"


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


Metadata = list[tuple[str, str]]


def grpc_flight_info(channel: grpc.Channel, command: bytes, metadata: Metadata
                     ) -> fpb.FlightInfo:
    """GetFlightInfo for a command, with grpcio (exact statuses, every message seen)."""
    call = channel.unary_unary(f"{_SERVICE}/GetFlightInfo",
                               request_serializer=fpb.FlightDescriptor.SerializeToString,
                               response_deserializer=fpb.FlightInfo.FromString)
    return call(fpb.FlightDescriptor(type=fpb.FlightDescriptor.CMD, cmd=command),
                metadata=metadata)


def grpc_do_get(channel: grpc.Channel, ticket: fpb.Ticket, metadata: Metadata
                ) -> list[fpb.FlightData]:
    call = channel.unary_stream(f"{_SERVICE}/DoGet",
                                request_serializer=fpb.Ticket.SerializeToString,
                                response_deserializer=fpb.FlightData.FromString)
    return list(call(ticket, metadata=metadata))


def grpc_action(channel: grpc.Channel, kind: str, body: bytes, metadata: Metadata
                ) -> list[fpb.Result]:
    call = channel.unary_stream(f"{_SERVICE}/DoAction",
                                request_serializer=fpb.Action.SerializeToString,
                                response_deserializer=fpb.Result.FromString)
    return list(call(fpb.Action(type=kind, body=body), metadata=metadata))


def grpc_status_of_query(port: int, query: str, token: str) -> tuple[grpc.StatusCode, str]:
    """The exact gRPC status of running `query` (GetFlightInfo, then DoGet) with grpcio."""
    metadata = [("authorization", f"Bearer {token}")]
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        info = grpc_flight_info(channel, pack(sql.CommandStatementQuery(query=query)),
                                metadata)
        for endpoint in info.endpoint:
            grpc_do_get(channel, endpoint.ticket, metadata)
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    finally:
        channel.close()
    return grpc.StatusCode.OK, ""
