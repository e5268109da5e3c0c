"""Arrow IPC messages inside Flight's FlightData, encoded without extra copies of the body.

FlightData carries an IPC message split in two: the flatbuffer header (field 2) and the
body (field 1000). pyarrow writes encapsulated messages (continuation marker, length,
header, body), which are cut apart here and framed by hand.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator

import pyarrow as pa

from engine.arrow_types import ResultBatch
from flight_server.errors import Cancelled, InvalidArgument, ResourceExhausted, Unimplemented
from flight_server.generated import Flight_pb2 as fpb

_CONTINUATION = b"\xff\xff\xff\xff"
_HEADER_TAG = b"\x12"  # field 2, length-delimited
_METADATA_TAG = b"\x1a"  # field 3, length-delimited
_BODY_TAG = b"\xc2\x3e"  # field 1000, length-delimited


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _split(encapsulated: pa.Buffer) -> tuple[pa.Buffer, pa.Buffer]:
    """(header, body) of an encapsulated IPC message."""
    (length,) = struct.unpack_from("<i", encapsulated, 4)
    return encapsulated.slice(8, length), encapsulated.slice(8 + length)


def _frame(header: pa.Buffer, body: pa.Buffer | None, app_metadata: bytes = b"") -> bytes:
    parts: list[bytes | pa.Buffer] = [_HEADER_TAG, _varint(header.size), header]
    if app_metadata:
        parts += [_METADATA_TAG, _varint(len(app_metadata)), app_metadata]
    if body is not None and body.size:
        parts += [_BODY_TAG, _varint(body.size), body]
    return b"".join(parts)


def schema_bytes(schema: pa.Schema) -> bytes:
    """The encapsulated IPC schema message, as FlightInfo and SchemaResult carry it."""
    return schema.serialize().to_pybytes()


def flight_data(message: pa.Buffer) -> bytes:
    """The serialized FlightData of an encapsulated IPC message."""
    header, body = _split(message)
    return _frame(header, body)


def encode_stream(schema: pa.Schema, batches: Iterable[ResultBatch]) -> Iterator[bytes]:
    """Serialized FlightData messages: the schema, then one per batch (batches already
    serialized as FlightData pass as they are)."""
    header, _ = _split(schema.serialize())
    yield _frame(header, None)
    for batch in batches:
        yield batch if isinstance(batch, bytes) else flight_data(batch.serialize())


def _encapsulate(data: fpb.FlightData) -> pa.Buffer:
    header = data.data_header
    padding = b"\x00" * (-len(header) % 8)
    prefix = _CONTINUATION + struct.pack("<i", len(header) + len(padding))
    return pa.py_buffer(prefix + header + padding + data.data_body)


class PutStream:
    """The record batches of a DoPut upload, read lazily from the gRPC request stream."""

    def __init__(self, messages: Iterator[fpb.FlightData]) -> None:
        self._messages = messages
        first = next(messages, None)
        if first is None:
            raise InvalidArgument("DoPut stream is empty")
        self.descriptor = first.flight_descriptor
        self.schema = self._read_schema(first)

    @staticmethod
    def _read_schema(first: fpb.FlightData) -> pa.Schema:
        if not first.data_header:
            return pa.schema([])  # a bare descriptor: an update with nothing to bind
        try:
            message = pa.ipc.read_message(_encapsulate(first))
            # Checked first: pyarrow crashes reading a schema from another message type.
            if message.type != "schema":
                raise InvalidArgument(f"DoPut must start with a schema, not {message.type}")
            return pa.ipc.read_schema(message)
        except (pa.ArrowException, OSError) as exc:
            raise InvalidArgument(f"malformed schema in DoPut: {_one_line(exc)}") from None

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for data in self._messages:
            if not data.data_header:
                continue  # metadata-only message
            try:
                message = pa.ipc.read_message(_encapsulate(data))
                if message.type != "record batch":
                    raise Unimplemented(f"DoPut {message.type} messages are not supported")
                batch = pa.ipc.read_record_batch(message, self.schema)
                batch.validate(full=True)  # never compute on corrupt buffers
            except (pa.ArrowException, OSError) as exc:
                raise InvalidArgument(
                    f"malformed record batch in DoPut: {_one_line(exc)}") from None
            yield batch

    def read_all(self, max_bytes: int | None = None,
                 is_cancelled: Callable[[], bool] = lambda: False) -> pa.Table:
        """Every batch, refusing uploads past `max_bytes` as soon as they pass it."""
        batches = []
        total = 0
        for batch in self:
            total += batch.nbytes
            if max_bytes is not None and total > max_bytes:
                raise ResourceExhausted(
                    f"upload exceeds the server's limit of {max_bytes} bytes; nothing was written"
                )
            if is_cancelled():
                raise Cancelled("upload cancelled by the client; nothing was written")
            batches.append(batch)
        return pa.Table.from_batches(batches, schema=self.schema)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
