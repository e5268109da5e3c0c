"""The committed generated protocol code matches the .proto files."""

from __future__ import annotations

from flight_server.generated import Flight_pb2 as fpb
from flight_server.generated import FlightSql_pb2 as sql
from flight_server.proto.generate import stale_files
from flight_server.protocol import pack


def test_generated_code_is_not_stale() -> None:
    assert stale_files() == []


def test_wire_names_and_numbers() -> None:
    assert pack(sql.CommandStatementQuery(query="x")).find(
        b"type.googleapis.com/arrow.flight.protocol.sql.CommandStatementQuery") >= 0
    assert fpb.FlightData.DESCRIPTOR.fields_by_name["data_body"].number == 1000
    tables = sql.CommandGetTables.DESCRIPTOR.fields_by_name
    assert [tables[n].number for n in ("catalog", "db_schema_filter_pattern",
                                       "table_name_filter_pattern", "table_types",
                                       "include_schema")] == [1, 2, 3, 4, 5]
    assert sql.SQL_DDL_CATALOG == 500
    assert sql.SQL_STORED_FUNCTIONS_USING_CALL_SYNTAX_SUPPORTED == 576
