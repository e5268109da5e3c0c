"""Plain table reads kept in memory (engine.read_cache): which reads, until when, how much."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from catalog import IcebergCatalog, TableIdent
from engine import EngineConfig, SqlEngine
from engine.errors import QueryCancelled
from engine.read_cache import ReadResults, plain_read

ITEMS = TableIdent("public", "items")
ROWS = pa.table({"id": pa.array(range(100), pa.int64()),
                 "name": [f"item-{i}" for i in range(100)]})


def _engine(tmp_path: Path, **settings: int) -> SqlEngine:
    catalog = IcebergCatalog.embedded(str(tmp_path / "warehouse"))
    catalog.create_namespace("public")
    catalog.create_table(ITEMS, ROWS.schema)
    catalog.append(ITEMS, ROWS)
    return SqlEngine(catalog, EngineConfig(**settings))


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[SqlEngine]:
    sql_engine = _engine(tmp_path)
    yield sql_engine
    sql_engine.close()


def _messages(engine: SqlEngine, text: str) -> list[bytes]:
    query = engine.session().plan(text)
    return list(engine.stream(query, lambda: False, wire=pa.Buffer.to_pybytes))


def _decoded(engine: SqlEngine, text: str, messages: list[bytes]) -> pa.Table:
    schema = engine.session().plan(text).schema
    return pa.Table.from_batches(
        [pa.ipc.read_record_batch(pa.py_buffer(message), schema) for message in messages],
        schema)


@pytest.mark.parametrize(("text", "plain"), [
    ("SELECT * FROM items", True),
    ("SELECT name AS label, id FROM items", True),
    ("SELECT * FROM (SELECT id FROM items) AS s", True),
    ("SELECT * FROM items WHERE id > 1", False),
    ("SELECT * FROM items WHERE random() < 0.5", False),
    ("SELECT * FROM items LIMIT 2", False),
    ("SELECT id + 1 FROM items", False),
    ("SELECT id, now() FROM items", False),
    ("SELECT count(*) FROM items", False),
    ("SELECT * FROM items ORDER BY id", False),
    ("SELECT a.id FROM items a JOIN items b ON a.id = b.id", False),
    ("SELECT * FROM items UNION ALL SELECT * FROM items", False),
])
def test_only_reads_of_columns_are_plain(engine: SqlEngine, text: str, plain: bool) -> None:
    query = engine.session().plan(text)
    assert query.frame is not None
    assert plain_read(query.frame, query.frame.execution_plan()) is plain


def test_a_temporary_table_is_not_kept_twice(engine: SqlEngine) -> None:
    """Its rows already live in the session; its scan is not of files."""
    query = engine.session(temporary={"scratch": ROWS}).plan("SELECT * FROM scratch")
    assert query.frame is not None
    assert not plain_read(query.frame, query.frame.execution_plan())


def test_a_kept_read_is_sent_again_until_the_table_changes(engine: SqlEngine) -> None:
    first = _messages(engine, "SELECT * FROM items")
    assert _decoded(engine, "SELECT * FROM items", first).equals(ROWS)
    assert len(engine.read_results) == 1
    assert engine.read_results.kept_bytes > sum(map(len, first))  # with the plan
    again = _messages(engine, "SELECT * FROM items")
    assert len(again) == len(first) and all(a is b for a, b in zip(again, first, strict=True))

    more = pa.table({"id": pa.array([100], pa.int64()), "name": ["item-100"]})
    engine.catalog.append(ITEMS, more)  # as any other writer of the catalog would
    after = _messages(engine, "SELECT * FROM items")
    assert _decoded(engine, "SELECT * FROM items", after).sort_by("id").equals(
        pa.concat_tables([ROWS, more]))
    # The replaced version's entry went with it: only the new one is kept.
    assert len(engine.read_results) == 1
    assert engine.read_results.kept_bytes > sum(map(len, after))


def test_other_queries_and_other_columns_are_not_served_from_it(engine: SqlEngine) -> None:
    _messages(engine, "SELECT * FROM items")
    ids = _decoded(engine, "SELECT id FROM items", _messages(engine, "SELECT id FROM items"))
    assert ids.equals(ROWS.select(["id"]))
    filtered = "SELECT * FROM items WHERE id < 3"
    assert _decoded(engine, filtered, _messages(engine, filtered)).num_rows == 3


def test_nothing_is_kept_with_a_zero_budget(tmp_path: Path) -> None:
    sql_engine = _engine(tmp_path, read_cache_bytes=0)
    try:
        first = _messages(sql_engine, "SELECT * FROM items")
        again = _messages(sql_engine, "SELECT * FROM items")
        assert sql_engine.read_results.kept_bytes == 0
        assert not any(a is b for a, b in zip(again, first, strict=True))
    finally:
        sql_engine.close()


def test_the_budget_drops_the_least_recently_used() -> None:
    """Entries count their messages and their plan (which names every file read)."""
    results = ReadResults(max_bytes=12)
    for key in (b"a", b"b"):
        assert list(results.keeping(key, b"p" + key, [b"1234"])) == [b"1234"]
    assert results.kept_bytes == 12
    assert results.get(b"a") == (b"1234",)  # now b is the least recently used
    list(results.keeping(b"c", b"pc", [b"12", b"34"]))
    assert results.get(b"b") is None
    assert results.get(b"a") == (b"1234",) and results.get(b"c") == (b"12", b"34")
    assert results.kept_bytes == 12
    # Too big to keep at all: passed on whole, nothing dropped for it.
    assert list(results.keeping(b"d", b"pd", [b"123456", b"123456"])) == [b"123456"] * 2
    assert results.get(b"d") is None and results.kept_bytes == 12
    assert list(results.keeping(b"e", b"a plan of 13 b", [b"1"])) == [b"1"]
    assert results.get(b"e") is None


def test_an_unfinished_read_is_not_kept() -> None:
    results = ReadResults(max_bytes=100)

    def failing() -> Iterator[bytes]:
        yield b"first"
        raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError):
        list(results.keeping(b"k", b"plan", failing()))
    abandoned = results.keeping(b"k", b"plan", iter([b"x", b"y"]))
    assert next(abandoned) == b"x"
    abandoned.close()  # the client went away after one message
    assert results.get(b"k") is None and results.kept_bytes == 0


def test_collecting_results_has_a_budget_and_one_reader_per_key() -> None:
    """Concurrent first reads: only one read of a key collects its messages, and all the
    results being collected together hold at most the budget."""
    results = ReadResults(max_bytes=10)
    first = results.keeping(b"k", b"", iter([b"123", b"456"]))
    second = results.keeping(b"k", b"", iter([b"123", b"456"]))
    other = results.keeping(b"o", b"", iter([b"12345", b"6"]))
    assert next(first) == b"123" and next(second) == b"123"
    assert next(other) == b"12345"  # 3 + 5 collecting, within 10
    assert list(first) == [b"456"]  # 3 + 3 + 5 would pass 10: first lets go of its copy
    assert results.get(b"k") is None
    assert list(other) == [b"6"] and results.get(b"o") == (b"12345", b"6")
    assert list(second) == [b"456"]  # passed on, never collected
    assert results.get(b"k") is None
    assert list(results.keeping(b"k", b"", iter([b"123", b"456"]))) == [b"123", b"456"]
    assert results.get(b"k") == (b"123", b"456")  # collecting was all given back


def test_the_collecting_read_stays_the_only_one_until_it_ends() -> None:
    results = ReadResults(max_bytes=100)
    first = results.keeping(b"k", b"", iter([b"1", b"2"]))
    assert next(first) == b"1"
    assert list(results.keeping(b"k", b"", iter([b"1", b"2"]))) == [b"1", b"2"]
    assert b"k" in results._collecting  # a reader that did not collect left it alone
    assert list(first) == [b"2"] and results.get(b"k") == (b"1", b"2")
    assert not results._collecting


def test_a_kept_read_still_stops_when_cancelled(engine: SqlEngine) -> None:
    _messages(engine, "SELECT * FROM items")
    query = engine.session().plan("SELECT * FROM items")
    with pytest.raises(QueryCancelled):
        list(engine.stream(query, lambda: True, wire=pa.Buffer.to_pybytes))


def test_forgetting_a_replaced_version_drops_only_its_entries() -> None:
    results = ReadResults(max_bytes=100)
    list(results.keeping(b"old", b"scan /links/version-1/ columns a", [b"1"]))
    list(results.keeping(b"new", b"scan /links/version-2/ columns a", [b"2"]))
    results.forget_reading("/links/version-1")
    assert results.get(b"old") is None and results.get(b"new") == (b"2",)
