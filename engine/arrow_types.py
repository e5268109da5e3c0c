"""Arrow types as results leave the engine.

Clients (old JDBC drivers above all) cannot read view or small-decimal types, and the
schema promised in FlightInfo must equal every streamed batch's schema, so results are
cast to a plain, declared schema at this one boundary.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import pyarrow as pa

# A result batch in the client's wire form, made by the server's transport from the
# Arrow IPC message a query worker sent: forwarded as it is, not decoded and encoded again.
WireMessage = bytes
ResultBatch = pa.RecordBatch | WireMessage


def plain_type(dtype: pa.DataType) -> pa.DataType:
    if pa.types.is_dictionary(dtype):
        return plain_type(dtype.value_type)
    if pa.types.is_string_view(dtype) or pa.types.is_large_string(dtype):
        return pa.string()
    if pa.types.is_binary_view(dtype) or pa.types.is_large_binary(dtype):
        return pa.binary()
    if isinstance(dtype, pa.Decimal32Type | pa.Decimal64Type):
        return pa.decimal128(dtype.precision, dtype.scale)
    if pa.types.is_list_view(dtype) or pa.types.is_large_list(dtype):
        return pa.list_(_plain_field(dtype.value_field))
    if pa.types.is_list(dtype):
        return pa.list_(_plain_field(dtype.value_field))
    if pa.types.is_struct(dtype):
        return pa.struct([_plain_field(dtype.field(i)) for i in range(dtype.num_fields)])
    return dtype


def _plain_field(field: pa.Field) -> pa.Field:
    return pa.field(field.name, plain_type(field.type), field.nullable)


def scan_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` with strings and binaries as views, the types DataFusion decodes Parquet
    into fastest (no copy of the values out of the pages): TPC-H SF 1 in process 7% faster
    in an alternating A/B, q19 by a quarter. Results still leave plain (`plain_schema`)."""
    return pa.schema([pa.field(f.name, _VIEWS.get(f.type, f.type), f.nullable, f.metadata)
                      for f in schema])


_VIEWS = {pa.string(): pa.string_view(), pa.binary(): pa.binary_view()}


def plain_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([_plain_field(f) for f in schema])


def conform_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """`batch` with exactly `schema` (types and nullability)."""
    if batch.schema.equals(schema):
        return batch
    columns = [
        column if column.type == field.type else column.cast(field.type)
        for column, field in zip(batch.columns, schema, strict=True)
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def split_batch(batch: pa.RecordBatch, max_bytes: int) -> list[pa.RecordBatch]:
    """Slices of `batch` of at most about `max_bytes` each (Flight messages stay small)."""
    size = batch.nbytes
    if size <= max_bytes or batch.num_rows <= 1:
        return [batch]
    pieces = -(-size // max_bytes)
    rows = -(-batch.num_rows // pieces)
    return [batch.slice(start, rows) for start in range(0, batch.num_rows, rows)]


def sized_batches(batches: Iterable[pa.RecordBatch], max_bytes: int,
                  max_hold_s: float = 0.1) -> Iterator[pa.RecordBatch]:
    """`batches` (of one schema) regrouped into batches of about `max_bytes`: big ones
    split, small ones combined. Every result message costs a fixed amount on each hop
    (pipe, gRPC, client), so fewer, larger ones stream faster. Small batches are held at
    most about `max_hold_s`, so a slow query's rows still arrive as they come."""
    held: list[pa.RecordBatch] = []
    held_bytes = 0
    held_since = 0.0
    for batch in batches:
        if held and (held_bytes + batch.nbytes > max_bytes
                     or time.monotonic() - held_since > max_hold_s):
            yield pa.concat_batches(held) if len(held) > 1 else held[0]
            held, held_bytes = [], 0
        if batch.nbytes >= max_bytes:
            yield from split_batch(batch, max_bytes)
            continue
        if not held:
            held_since = time.monotonic()
        held.append(batch)
        held_bytes += batch.nbytes
    if held:
        yield pa.concat_batches(held) if len(held) > 1 else held[0]
