"""Arrow IPC messages inside Flight's FlightData, encoded without extra copies of the body.

FlightData carries an IPC message split in two: the flatbuffer header (field 2) and the
body (field 1000). pyarrow writes encapsulated messages (continuation marker, length,
header, body), which are cut apart here and framed by hand.
"""

from __future__ import annotations

import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import pyarrow as pa
from google.protobuf.message import DecodeError

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


K = TypeVar("K")
V = TypeVar("V")


class _ByIdentity(Generic[K, V]):
    """Encodings of Arrow objects that are sent again as they are (a kept constant's
    schema and rows), found by the object's identity: hashing a schema or a table costs
    more than encoding it, and encoding again costs 20 µs and more on a busy server, whose
    caches are cold (bench/RESULTS.md). Holds the objects it encoded, so that an id stays
    theirs while kept; forgets the least recently used past `size`. Objects `worth`
    rejects (large one-off results) are encoded each time and not held."""

    def __init__(self, encode: Callable[[K], V], size: int = 256,
                 worth: Callable[[K], bool] = lambda _: True) -> None:
        self._encode = encode
        self._size = size
        self._worth = worth
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, tuple[K, V]] = OrderedDict()

    def __call__(self, key: K) -> V:
        with self._lock:
            entry = self._entries.get(id(key))
            if entry is not None and entry[0] is key:
                self._entries.move_to_end(id(key))
                return entry[1]
        value = self._encode(key)
        if self._worth(key):
            with self._lock:
                self._entries[id(key)] = (key, value)
                if len(self._entries) > self._size:
                    self._entries.popitem(last=False)
        return value


# The constants clients run again and again (`SELECT 1`, a pool's liveness check) have
# rows of a few values; larger results known at planning (a long literal, a bound value)
# are mostly sent once and must not stay in memory.
_KEPT_TABLE_BYTES = 16 * 1024


def _schema_message(schema: pa.Schema) -> bytes:
    # From the kept encoding: a query's FlightInfo has encoded the schema its DoGet sends.
    header, _ = _split(pa.py_buffer(schema_bytes(schema)))
    return _frame(header, None)


_schemas: _ByIdentity[pa.Schema, bytes] = _ByIdentity(
    lambda schema: schema.serialize().to_pybytes())
_schema_messages: _ByIdentity[pa.Schema, bytes] = _ByIdentity(_schema_message)
_tables: _ByIdentity[pa.Table, tuple[bytes, ...]] = _ByIdentity(
    lambda table: tuple(flight_data(batch.serialize()) for batch in table.to_batches()),
    worth=lambda table: table.nbytes <= _KEPT_TABLE_BYTES)


def schema_bytes(schema: pa.Schema) -> bytes:
    """The encapsulated IPC schema message, as FlightInfo and SchemaResult carry it."""
    return _schemas(schema)


def table_messages(table: pa.Table) -> tuple[bytes, ...]:
    """`table`'s batches as serialized FlightData messages, for a result known at
    planning (a constant's rows): the same each time it is sent."""
    return _tables(table)


def flight_data(message: pa.Buffer) -> bytes:
    """The serialized FlightData of an encapsulated IPC message."""
    header, body = _split(message)
    return _frame(header, body)


def encode_stream(schema: pa.Schema, batches: Iterable[ResultBatch]) -> Iterator[bytes]:
    """Serialized FlightData messages: the schema, then one per batch (batches already
    serialized as FlightData pass as they are)."""
    yield _schema_messages(schema)
    for batch in batches:
        yield batch if isinstance(batch, bytes) else flight_data(batch.serialize())


@dataclass(frozen=True)
class _Upload:
    """What DoPut reads of one uploaded FlightData message: views into its serialized
    bytes, not copies (parsing it as a protobuf message copies the body twice, which on a
    1 GB ingest cost a tenth of its time)."""

    descriptor: list[memoryview]  # every field-1 part: protobuf merges a repeated message
    header: memoryview
    body: memoryview


_MALFORMED = "malformed FlightData in DoPut"
_FIXED_BYTES = {1: 8, 5: 4}  # wire types 64-bit and 32-bit
_MAX_FIELD_NUMBER = 2**29 - 1
_MAX_KEY_BYTES = 5  # a key is a 32-bit varint


def _varint_at(data: memoryview, at: int) -> tuple[int, int]:
    """The varint at `at`, and where it ends."""
    value = shift = 0
    while shift < 64 and at < len(data):
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
    raise InvalidArgument(_MALFORMED)


def _upload(serialized: bytes) -> _Upload:
    """The fields of a serialized FlightData: 1 (descriptor), 2 (header), 1000 (body);
    other fields are skipped, and the last of a repeated header or body counts, as in
    protobuf. Groups (wire types 3, 4), long deprecated, are refused."""
    data = memoryview(serialized)
    descriptor: list[memoryview] = []
    found: dict[int, memoryview] = {}
    at = 0
    while at < len(data):
        start = at
        key, at = _varint_at(data, at)
        if at - start > _MAX_KEY_BYTES:
            raise InvalidArgument(_MALFORMED)
        number, wire_type = key >> 3, key & 7
        if not 0 < number <= _MAX_FIELD_NUMBER:
            raise InvalidArgument(_MALFORMED)
        if wire_type == 0:
            _, at = _varint_at(data, at)
            continue
        if wire_type in _FIXED_BYTES:
            at += _FIXED_BYTES[wire_type]
            continue
        if wire_type != 2:
            raise InvalidArgument(_MALFORMED)
        size, at = _varint_at(data, at)
        if at + size > len(data):
            raise InvalidArgument(_MALFORMED)
        if number == 1:
            descriptor.append(data[at:at + size])
        else:
            found[number] = data[at:at + size]
        at += size
    if at > len(data):  # a fixed-size field cut short
        raise InvalidArgument(_MALFORMED)
    empty = data[:0]
    return _Upload(descriptor, found.get(2, empty), found.get(1000, empty))


def _encapsulate(upload: _Upload) -> pa.Buffer:
    """The upload's IPC message as one encapsulated buffer, 8-byte aligned as Arrow wants
    it: the one copy of the body on the way in."""
    header, body = upload.header, upload.body
    padded = len(header) + (-len(header) % 8)
    message = pa.allocate_buffer(8 + padded + len(body))
    out = memoryview(message).cast("B")
    out[:8] = _CONTINUATION + struct.pack("<i", padded)
    out[8:8 + len(header)] = header
    out[8 + len(header):8 + padded] = bytes(padded - len(header))
    out[8 + padded:] = body
    return message


class PutStream:
    """The record batches of a DoPut upload, read lazily from the gRPC request stream of
    serialized FlightData messages."""

    def __init__(self, messages: Iterator[bytes]) -> None:
        self._messages = (_upload(message) for message in messages)
        first = next(self._messages, None)
        if first is None:
            raise InvalidArgument("DoPut stream is empty")
        self.descriptor = fpb.FlightDescriptor()
        try:
            for part in first.descriptor:
                self.descriptor.MergeFromString(part)
        except DecodeError:
            raise InvalidArgument("malformed FlightDescriptor in DoPut") from None
        self.schema = self._read_schema(first)

    @staticmethod
    def _read_schema(first: _Upload) -> pa.Schema:
        if not first.header:
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
            if not data.header:
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
