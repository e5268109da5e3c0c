"""Arrow types as results leave the engine.

Clients (old JDBC drivers above all) cannot read view or small-decimal types, and the
schema promised in FlightInfo must equal every streamed batch's schema, so results are
cast to a plain, declared schema at this one boundary.
"""

from __future__ import annotations

import pyarrow as pa


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
