"""Pure functions: placeholders, LIKE patterns, config parsing, type plainness."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from catalog import TableIdent
from engine.arrow_types import conform_batch, plain_schema, sized_batches, split_batch
from engine.bridge import remove_orphan_links
from engine.parameters import bound_values, number_placeholders
from engine.physical_plans import KeptPlans, ShippedPlan
from engine.references import defined_names, referenced_tables
from engine.session import datafusion_text
from engine.text_cache import KEPT_LENGTH, by_short_text
from flight_server import handles
from flight_server.cluster import SMALL_INPUT_BYTES, task_streams
from flight_server.config import ConfigError, auth_config, parse_size, parse_users, split_tokens
from flight_server.errors import InvalidArgument, NotFound
from flight_server.generated import Flight_pb2 as fpb
from flight_server.handles import HandleStore
from flight_server.ipc import _ByIdentity, _upload, encode_stream, schema_bytes, table_messages
from flight_server.metadata import like_matcher
from tests.reference import matches, order_keys


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("select ? , ?", "select $1 , $2"),
        ("select '?', \"a?\" , ?", "select '?', \"a?\" , $1"),
        ("select 'it''s ?' , ? -- ?\n, ?", "select 'it''s ?' , $1 -- ?\n, $2"),
        ("/* ? */ select ?", "/* ? */ select $1"),
        ("select $1", "select $1"),
    ],
)
def test_number_placeholders(sql: str, expected: str) -> None:
    assert number_placeholders(sql) == expected


def test_bound_values_unwraps_dense_unions() -> None:
    union = pa.UnionArray.from_dense(pa.array([1], pa.int8()), pa.array([0], pa.int32()),
                                     [pa.array([], pa.int64()), pa.array(["x"])], ["i", "s"])
    values = bound_values(pa.record_batch([union, pa.array([3])], names=["a", "b"]))
    assert values == {"1": pa.scalar("x"), "2": pa.scalar(3)}


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [("tp%", ["tpch", "tp"], ["xtpch"]), ("na_ion", ["nation"], ["naion", "nat_ion"]),
     ("a\\_b", ["a_b"], ["axb"]), ("%", ["", "anything"], [])],
)
def test_like_matcher(pattern: str, yes: list[str], no: list[str]) -> None:
    matcher = like_matcher(pattern)
    assert matcher is not None
    assert all(matcher.fullmatch(v) for v in yes)
    assert not any(matcher.fullmatch(v) for v in no)


def test_split_tokens_and_users() -> None:
    assert split_tokens("a, b\n# c\n\nd") == ["a", "b", "d"]
    assert parse_users("u:p:w, v:q") == {"u": "p:w", "v": "q"}
    with pytest.raises(ConfigError):
        parse_users("nopassword")


def test_auth_config_from_environment() -> None:
    config = auth_config({"KRISHIV_COORDINATOR_BEARER_TOKENS": "a,b",
                          "KRISHIV_COORDINATOR_BEARER_TOKEN": "c",
                          "KRISHIV_COORDINATOR_AUTH_RELOAD_INTERVAL_SECS": "2.5"})
    assert config.tokens == ("a", "b", "c") and config.reload_interval_s == 2.5
    assert config.enabled
    assert not auth_config({}).enabled
    with pytest.raises(ConfigError):
        auth_config({"KRISHIV_COORDINATOR_AUTH_RELOAD_INTERVAL_SECS": "soon"})


def test_parse_size() -> None:
    assert parse_size("512M") == 512 * 1024**2
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size("1000") == 1000
    with pytest.raises(ConfigError):
        parse_size("lots")


def test_plain_schema_and_conform() -> None:
    schema = pa.schema([pa.field("s", pa.string_view()), pa.field("d", pa.decimal64(10, 2)),
                        pa.field("l", pa.large_string(), nullable=False)])
    plain = plain_schema(schema)
    assert plain.types == [pa.string(), pa.decimal128(10, 2), pa.string()]
    assert not plain.field("l").nullable
    batch = pa.record_batch([pa.array(["a"], pa.string_view()),
                             pa.array([1], pa.decimal64(10, 2)),
                             pa.array(["b"], pa.large_string())], schema=schema)
    assert conform_batch(batch, plain).schema.equals(plain)


def test_split_batch_respects_byte_cap() -> None:
    batch = pa.record_batch([pa.array(range(100_000), pa.int64())], names=["x"])
    pieces = split_batch(batch, 100_000)
    assert all(p.nbytes <= 100_000 for p in pieces)
    assert sum(p.num_rows for p in pieces) == 100_000


def test_referenced_tables() -> None:
    found = referenced_tables(
        'WITH c AS (SELECT 1) SELECT * FROM tpch.Nation n JOIN "Region" r ON true, c', "public")
    assert TableIdent("tpch", "nation") in found
    assert TableIdent("public", "Region") in found


def test_sized_batches_combine_small_and_split_big_keeping_row_order() -> None:
    small = [pa.record_batch({"v": list(range(i * 100, i * 100 + 100))}) for i in range(50)]
    big = pa.record_batch({"v": list(range(5000, 105000))})
    out = list(sized_batches([*small, big], max_bytes=8_000))
    assert [v for b in out for v in b.column(0).to_pylist()] == list(range(105000))
    assert all(b.nbytes <= 8_000 for b in out)
    assert len(out) < len(small) + big.nbytes // 8_000 + 2  # small ones were combined
    assert all(b.schema == big.schema for b in out)


def test_sized_batches_do_not_hold_rows_of_a_slow_query() -> None:
    batches = [pa.record_batch({"v": [i]}) for i in range(3)]
    assert len(list(sized_batches(batches, max_bytes=1 << 20, max_hold_s=-1.0))) == 3


def test_link_folders_of_ended_processes_are_removed(tmp_path: Path) -> None:
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    orphan = tmp_path / f"krishiv-tables-{ended.pid}-x1"
    (orphan / "links").mkdir(parents=True)
    mine = tmp_path / f"krishiv-tables-{os.getpid()}-x2"
    unowned = tmp_path / "krishiv-tables-x3"  # no process id in the name: left alone
    mine.mkdir()
    unowned.mkdir()
    remove_orphan_links(tmp_path)
    assert not orphan.exists()
    assert mine.exists() and unowned.exists()


def test_translations_are_kept_per_dialect() -> None:
    text = "SELECT `a` FROM t WHERE b = ?"
    assert datafusion_text(text, "mysql") == 'SELECT "a" FROM t WHERE b = $1'
    assert datafusion_text(text, "datafusion") == "SELECT `a` FROM t WHERE b = $1"


def test_only_short_texts_are_kept() -> None:
    calls: list[str] = []

    @by_short_text(maxsize=4)
    def length(text: str) -> int:
        calls.append(text)
        return len(text)

    short, long = "x" * 10, "y" * (KEPT_LENGTH + 1)
    assert [length(short), length(short), length(long), length(long)] == [10, 10] + [
        KEPT_LENGTH + 1] * 2
    assert calls == [short, long, long]


def test_answers_are_checked_in_order_of_their_order_by_keys() -> None:
    """The reference check takes ties in any order but not rows out of order."""
    duck = duckdb.connect()
    text = ("SELECT x AS k, y FROM (VALUES (2, 'c'), (1, 'a'), (1, 'b')) AS t(x, y) "
            "ORDER BY k DESC")
    assert matches([(2, "c"), (1, "b"), (1, "a")], duck, text)
    assert matches([(2, "c"), (1, "a"), (1, "b")], duck, text)
    assert not matches([(1, "a"), (2, "c"), (1, "b")], duck, text)
    assert not matches([(2, "c"), (1, "a")], duck, text)
    assert order_keys("SELECT a, b FROM t ORDER BY 2, a", ["a", "b"]) == [1, 0]
    assert order_keys("SELECT a FROM t", ["a"]) == []


_DATA_FIELDS = st.fixed_dictionaries({}, optional={
    "flight_descriptor": st.builds(fpb.FlightDescriptor, type=st.sampled_from([1, 2]),
                                   cmd=st.binary(max_size=20),
                                   path=st.lists(st.text(max_size=5), max_size=2)),
    "data_header": st.binary(max_size=40),
    "app_metadata": st.binary(max_size=10),
    "data_body": st.binary(max_size=300),
})


def _merged_descriptor(parts: list[memoryview]) -> fpb.FlightDescriptor:
    descriptor = fpb.FlightDescriptor()
    for part in parts:
        descriptor.MergeFromString(part)
    return descriptor


@settings(max_examples=300, deadline=None)
@given(st.lists(_DATA_FIELDS, min_size=1, max_size=3))
def test_uploads_are_cut_apart_as_protobuf_reads_them(parts: list[dict[str, object]]) -> None:
    """DoPut's own FlightData parser agrees with protobuf, repeated and merged fields too
    (serialized messages one after another read as one merged message)."""
    serialized = b"".join(fpb.FlightData(**fields).SerializeToString()  # type: ignore[arg-type]
                          for fields in parts)
    expected = fpb.FlightData.FromString(serialized)
    upload = _upload(serialized)
    assert bytes(upload.header) == expected.data_header
    assert bytes(upload.body) == expected.data_body
    assert _merged_descriptor(upload.descriptor) == expected.flight_descriptor


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=60))
def test_garbled_uploads_are_refused_or_read_as_protobuf_reads_them(data: bytes) -> None:
    try:
        upload = _upload(data)
    except InvalidArgument as exc:
        assert str(exc) == "malformed FlightData in DoPut"
        return
    try:
        expected = fpb.FlightData.FromString(data)
    except DecodeError:  # then the descriptor must be what protobuf could not read
        with pytest.raises(DecodeError):
            _merged_descriptor(upload.descriptor)
        return
    assert bytes(upload.header) == expected.data_header
    assert bytes(upload.body) == expected.data_body


@pytest.mark.parametrize("data", [
    b"\x0d\x01\x02",  # a 32-bit field cut short
    b"\x09\x01",  # a 64-bit field cut short
    b"\x02\x00",  # field number 0
    b"\x95\x80\x80\x80\x10\x00\x00\x00\x00",  # a field number past 2**29 - 1
    b"\xf1\xff\x95\x9e\x8c\x00" + bytes(8),  # a key in six bytes (at most five)
    b"\x13\x14",  # a group
    b"\x12\x05ab",  # a header longer than the message
    b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",  # a varint past 64 bits
])
def test_malformed_uploads_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidArgument, match=r"^malformed FlightData in DoPut$"):
        _upload(data)


def test_task_streams() -> None:
    small, big = SMALL_INPUT_BYTES, SMALL_INPUT_BYTES + 1
    # Tasks of a stage of several share the cores by the executor's slots.
    assert task_streams(4, True, big, cores=8, slots=2) == 4
    assert task_streams(2, False, small, cores=2, slots=4) == 1
    # A stage's only task gets every core, unless all it reads is a few exchanged rows.
    assert task_streams(1, False, big, cores=8, slots=2) == 8
    assert task_streams(1, True, 0, cores=8, slots=2) == 8
    assert task_streams(1, False, small, cores=8, slots=2) == 1


def test_defined_names() -> None:
    text = 'WITH Revenue (a) AS (SELECT 1), "Q" AS (SELECT 2) SELECT * FROM revenue, "Q"'
    assert defined_names(text) == {"revenue", "Q"}
    assert defined_names("SELECT * FROM t") == frozenset()
    assert defined_names("SELEC (((") == frozenset()


def test_kept_plans_go_least_recently_used_first_past_their_count_or_bytes() -> None:
    plans = KeptPlans(max_plans=3, max_plan_bytes=100, max_bytes=250)
    for key in "abc":
        plans.keep(key, ShippedPlan(b"x" * 80, 1, False))
    assert plans.get("a") is not None  # now the most recently used
    plans.keep("d", ShippedPlan(b"x" * 80, 1, False))  # four plans: b goes
    assert [plans.get(k) is not None for k in "abcd"] == [True, False, True, True]
    plans.keep("e", ShippedPlan(b"x" * 100, 1, False))  # 340 bytes: two go, then 180
    assert [plans.get(k) is not None for k in "acde"] == [False, False, True, True]
    plans.keep("f", ShippedPlan(b"x" * 101, 1, False))  # too big to keep
    assert plans.get("f") is None


def test_handles_are_forgotten_after_their_time_unused_and_kept_while_used(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A handle lives `ttl_s` from its last use: using one keeps it, however many were
    made before or after it, while the unused ones go."""
    clock = [100.0]
    monkeypatch.setattr(handles.time, "monotonic", lambda: clock[0])
    store: HandleStore[int] = HandleStore("statement", ttl_s=10.0)
    made = [store.add(n) for n in range(1000)]
    clock[0] = 108.0
    assert store.get(made[0]) == 0 and store.get(made[500]) == 500
    late = store.add(1000)
    clock[0] = 115.0
    assert store.get(made[0]) == 0  # used at 108: still alive at 115
    assert len(store) == 3  # the 998 unused since 100 are gone
    with pytest.raises(NotFound, match="unknown or expired statement handle"):
        store.get(made[1])
    clock[0] = 124.0
    assert store.get(made[0]) == 0
    assert len(store) == 1  # made[500] (used at 108) and late (108) expired
    with pytest.raises(NotFound):
        store.get(late)


def test_encodings_kept_by_identity_match_fresh_ones() -> None:
    """Kept constants' schema and rows are encoded once; what is sent is what encoding
    them again would give, and an equal but distinct object gets its own encoding."""
    table = pa.table({"n": pa.array([1, 2], pa.int64())})
    other = pa.table({"n": pa.array([1, 2], pa.int64())})
    schema = table.schema  # each `.schema` is a new object: a kept plan holds one
    assert schema_bytes(schema) == schema.serialize().to_pybytes()
    assert schema_bytes(schema) is schema_bytes(schema)
    assert table_messages(table) is table_messages(table)
    assert table_messages(other) is not table_messages(table)
    assert table_messages(table) == tuple(encode_stream(table.schema, table.to_batches()))[1:]
    decoded = pa.ipc.open_stream(b"".join(
        _ipc_message(message) for message in encode_stream(table.schema, table_messages(table))
    )).read_all()
    assert decoded.equals(table)


def _ipc_message(flight_data: bytes) -> bytes:
    """The encapsulated IPC message inside a serialized FlightData."""
    message = fpb.FlightData.FromString(flight_data)
    header = message.data_header + b"\0" * (-len(message.data_header) % 8)
    return (b"\xff\xff\xff\xff" + len(header).to_bytes(4, "little") + header
            + message.data_body)


def test_identity_memo_keeps_the_recently_used_and_only_what_is_worth_it() -> None:
    encoded: list[object] = []

    def encode(key: object) -> int:
        encoded.append(key)
        return len(encoded)

    memo: _ByIdentity[object, int] = _ByIdentity(encode, size=3,
                                                 worth=lambda key: key is not large)
    keys = [object() for _ in range(4)]
    large = object()
    assert [memo(key) for key in keys[:3]] == [1, 2, 3]
    assert memo(keys[0]) == 1  # a hit, now the most recently used
    assert memo(keys[3]) == 4  # keys[1], the least recently used, is forgotten
    assert memo(keys[0]) == 1 and memo(keys[2]) == 3 and memo(keys[1]) == 5
    assert memo(large) == 6 and memo(large) == 7  # encoded each time, never held


def test_large_results_known_at_planning_are_not_kept_encoded() -> None:
    small = pa.table({"n": pa.array([1], pa.int64())})
    large = pa.table({"s": pa.array(["x" * 100_000])})
    assert table_messages(small) is table_messages(small)
    assert table_messages(large) is not table_messages(large)
    assert table_messages(large) == table_messages(large)
