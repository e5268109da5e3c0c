"""Flight SQL messages on the wire: commands arrive as google.protobuf.Any."""

from __future__ import annotations

import pyarrow as pa
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

from flight_server.errors import InvalidArgument
from flight_server.generated import Flight_pb2 as fpb
from flight_server.generated import FlightSql_pb2 as sql
from flight_server.ipc import schema_bytes

_TYPE_PREFIX = "type.googleapis.com/"

# Every Flight SQL command and ticket this server understands, by full protobuf name.
_MESSAGES: dict[str, type[Message]] = {
    cls.DESCRIPTOR.full_name: cls
    for cls in (
        sql.CommandStatementQuery,
        sql.CommandPreparedStatementQuery,
        sql.TicketStatementQuery,
        sql.CommandGetSqlInfo,
        sql.CommandGetCatalogs,
        sql.CommandGetDbSchemas,
        sql.CommandGetTables,
        sql.CommandGetTableTypes,
        sql.CommandGetPrimaryKeys,
        sql.CommandGetExportedKeys,
        sql.CommandGetImportedKeys,
        sql.CommandGetCrossReference,
        sql.CommandGetXdbcTypeInfo,
        sql.CommandStatementUpdate,
        sql.CommandPreparedStatementUpdate,
        sql.CommandStatementIngest,
        sql.CommandStatementSubstraitPlan,
        sql.ActionCreatePreparedStatementRequest,
        sql.ActionClosePreparedStatementRequest,
        sql.ActionCreatePreparedSubstraitPlanRequest,
        sql.ActionBeginTransactionRequest,
        sql.ActionEndTransactionRequest,
        sql.ActionBeginSavepointRequest,
        sql.ActionEndSavepointRequest,
        sql.ActionCancelQueryRequest,
    )
}


def pack(message: Message) -> bytes:
    """`message` wrapped in Any and serialized, as Flight SQL puts it on the wire."""
    wrapper = any_pb2.Any()
    wrapper.Pack(message)
    return wrapper.SerializeToString()


def unpack(payload: bytes) -> Message:
    """The Flight SQL message inside a serialized Any, or INVALID_ARGUMENT."""
    wrapper = any_pb2.Any()
    try:
        wrapper.ParseFromString(payload)
    except DecodeError:
        raise InvalidArgument("request is not a serialized google.protobuf.Any") from None
    name = wrapper.type_url.removeprefix(_TYPE_PREFIX)
    cls = _MESSAGES.get(name)
    if cls is None:
        shown = name or "<empty>"
        raise InvalidArgument(f"unknown Flight SQL command type: {shown[:200]}")
    message = cls()
    if not wrapper.Unpack(message):
        raise InvalidArgument(f"malformed {cls.DESCRIPTOR.name}")
    return message


def parse_plain(cls: type[Message], payload: bytes) -> Message:
    """A Flight (not Flight SQL) action body, sent without an Any wrapper."""
    message = cls()
    try:
        message.ParseFromString(payload)
    except DecodeError:
        raise InvalidArgument(f"malformed {cls.DESCRIPTOR.name}") from None
    return message


def command_of(descriptor: fpb.FlightDescriptor) -> Message:
    if descriptor.type != fpb.FlightDescriptor.CMD:
        raise InvalidArgument("only command descriptors are supported")
    return unpack(descriptor.cmd)


def flight_info(
    schema: pa.Schema, descriptor: fpb.FlightDescriptor, ticket: bytes = b"",
    endpoints: list[tuple[bytes, str]] | None = None,
) -> fpb.FlightInfo:
    """A FlightInfo with one endpoint on this server (no location: reuse the connection),
    or with `endpoints`: (ticket, location URI) pairs on other servers."""
    if endpoints is None:
        found = [fpb.FlightEndpoint(ticket=fpb.Ticket(ticket=ticket))]
    else:
        found = [fpb.FlightEndpoint(ticket=fpb.Ticket(ticket=t), location=[fpb.Location(uri=u)])
                 for t, u in endpoints]
    return fpb.FlightInfo(
        schema=schema_bytes(schema),
        flight_descriptor=descriptor,
        endpoint=found,
        total_records=-1,
        total_bytes=-1,
    )
