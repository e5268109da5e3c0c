"""Bulk ingest (DoPut CommandStatementIngest) through ADBC's adbc_ingest, every mode."""

from __future__ import annotations

from collections.abc import Iterator

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import grpc
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.conftest import adbc_connect, fetch_rows
from tests.servers import RunningServer, running_server

TOKEN = "ingest-token"
CAP_BYTES = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def ingest_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("ingest")
    with running_server(root / "warehouse", root, ["--max-upload", "64M"], TOKEN) as server:
        yield server


@pytest.fixture()
def iconn(ingest_server: RunningServer) -> Iterator[flightsql.Connection]:
    connection = adbc_connect(ingest_server)
    yield connection
    connection.close()


def _ingest(conn: flightsql.Connection, table: str, data: pa.Table | pa.RecordBatchReader,
            mode: str,
            **kwargs: object) -> int:
    with conn.cursor() as cur:
        return int(cur.adbc_ingest(table, data, mode=mode, **kwargs))


def _data(start: int, count: int) -> pa.Table:
    ids = pa.array(range(start, start + count), pa.int64())
    return pa.table({"id": ids, "label": pc.cast(ids, pa.string())})


def _error(conn: flightsql.Connection, table: str, data: pa.Table | pa.RecordBatchReader,
           mode: str,
           **kwargs: object) -> adbc_driver_manager.Error:
    with pytest.raises(adbc_driver_manager.Error) as err:
        _ingest(conn, table, data, mode, **kwargs)
    assert "Traceback" not in str(err.value)
    return err.value


def test_create_then_fail_on_existing(iconn: flightsql.Connection) -> None:
    assert _ingest(iconn, "made", _data(0, 3), "create") == 3
    assert fetch_rows(iconn, "SELECT id, label FROM public.made ORDER BY id") == [
        (0, "0"), (1, "1"), (2, "2")]
    err = _error(iconn, "made", _data(10, 1), "create")
    assert err.status_code == adbc_driver_manager.AdbcStatusCode.ALREADY_EXISTS
    assert fetch_rows(iconn, "SELECT count(*) FROM public.made") == [(3,)]


def test_append_and_its_failures(iconn: flightsql.Connection) -> None:
    _ingest(iconn, "grown", _data(0, 2), "create")
    assert _ingest(iconn, "grown", _data(2, 3), "append") == 3
    assert fetch_rows(iconn, "SELECT count(*), max(id) FROM public.grown") == [(5, 4)]
    missing = _error(iconn, "never_made", _data(0, 1), "append")
    assert missing.status_code == adbc_driver_manager.AdbcStatusCode.NOT_FOUND
    wrong = pa.table({"id": ["not", "ints"], "label": ["a", "b"]})
    mismatch = _error(iconn, "grown", wrong, "append")
    assert mismatch.status_code == adbc_driver_manager.AdbcStatusCode.INVALID_ARGUMENT
    narrow = pa.table({"id": pa.array([9], pa.int64())})
    assert _error(iconn, "grown", narrow, "append").status_code == (
        adbc_driver_manager.AdbcStatusCode.INVALID_ARGUMENT)
    assert fetch_rows(iconn, "SELECT count(*), max(id) FROM public.grown") == [(5, 4)]


def test_string_offsets_of_either_width_mix(iconn: flightsql.Connection) -> None:
    """Uploads with 32- and 64-bit string and binary offsets (pyarrow's and pandas' or
    polars' defaults) create, append to and replace the same table; every row reads back
    as sent, with plain types."""
    def rows(start: int, strings: pa.DataType, binaries: pa.DataType) -> pa.Table:
        ids = pa.array(range(start, start + 3), pa.int64())
        labels = pc.cast(ids, pa.string())
        return pa.table({"id": ids, "label": labels.cast(strings),
                         "raw": labels.cast(binaries)})

    _ingest(iconn, "widths", rows(0, pa.large_string(), pa.large_binary()), "create")
    _ingest(iconn, "widths", rows(3, pa.string(), pa.binary()), "append")
    _ingest(iconn, "widths", rows(6, pa.large_string(), pa.binary()), "append")
    with iconn.cursor() as cur:
        cur.execute("SELECT id, label, raw FROM public.widths ORDER BY id")
        table = cur.fetch_arrow_table()
    assert table.schema.types == [pa.int64(), pa.string(), pa.binary()]
    assert table.to_pylist() == [{"id": i, "label": str(i), "raw": str(i).encode()}
                                 for i in range(9)]
    _ingest(iconn, "widths", rows(20, pa.string(), pa.large_binary()), "replace")
    assert fetch_rows(iconn, "SELECT id, label FROM public.widths ORDER BY id") == [
        (20, "20"), (21, "21"), (22, "22")]


def test_replace_and_create_append(iconn: flightsql.Connection) -> None:
    _ingest(iconn, "swapped", _data(0, 5), "create")
    assert _ingest(iconn, "swapped", _data(100, 2), "replace") == 2
    assert fetch_rows(iconn, "SELECT id FROM public.swapped ORDER BY id") == [(100,), (101,)]
    other = pa.table({"x": pa.array([1.5, 2.5])})
    assert _ingest(iconn, "swapped", other, "replace") == 2
    assert fetch_rows(iconn, "SELECT x FROM public.swapped ORDER BY x") == [(1.5,), (2.5,)]
    assert _ingest(iconn, "fresh", _data(0, 1), "replace") == 1
    assert _ingest(iconn, "either", _data(0, 2), "create_append") == 2
    assert _ingest(iconn, "either", _data(2, 2), "create_append") == 2
    assert fetch_rows(iconn, "SELECT count(*) FROM public.either") == [(4,)]


def test_schema_and_catalog_targets(iconn: flightsql.Connection) -> None:
    fetch_rows(iconn, "CREATE SCHEMA landing")
    assert _ingest(iconn, "events", _data(0, 4), "create", db_schema_name="landing") == 4
    assert fetch_rows(iconn, "SELECT count(*) FROM landing.events") == [(4,)]
    assert _ingest(iconn, "events", _data(4, 1), "append", catalog_name="krishiv",
                   db_schema_name="landing") == 1
    err = _error(iconn, "events", _data(0, 1), "append", catalog_name="elsewhere",
                 db_schema_name="landing")
    assert err.status_code == adbc_driver_manager.AdbcStatusCode.NOT_FOUND
    assert fetch_rows(iconn, "SELECT count(*) FROM landing.events") == [(5,)]


def test_large_stream_of_many_batches(iconn: flightsql.Connection) -> None:
    data = _data(0, 1_200_000)
    reader = pa.RecordBatchReader.from_batches(data.schema, data.to_batches(max_chunksize=10_000))
    with iconn.cursor() as cur:
        assert cur.adbc_ingest("big", reader, mode="create") == 1_200_000
    assert fetch_rows(iconn, "SELECT count(*), sum(id), count(DISTINCT label) FROM public.big") == [
        (1_200_000, 1_200_000 * 1_199_999 // 2, 1_200_000)]


def test_oversized_upload_is_refused_and_changes_nothing(iconn: flightsql.Connection) -> None:
    _ingest(iconn, "capped", _data(0, 10), "create")
    rows = CAP_BYTES // 16 + 500_000  # two int64-sized columns, past the cap
    ids = pa.array(range(rows), pa.int64())
    big = pa.table({"id": ids, "label": pc.cast(ids, pa.string())})
    batches = pa.RecordBatchReader.from_batches(big.schema, big.to_batches(max_chunksize=100_000))
    err = _error(iconn, "capped", batches, "append")
    assert "exceeds the server's limit" in str(err)
    assert err.vendor_code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert fetch_rows(iconn, "SELECT count(*) FROM public.capped") == [(10,)]
    assert fetch_rows(iconn, "SELECT 1") == [(1,)]  # still serving


def test_temporary_tables_belong_to_their_session(ingest_server: RunningServer) -> None:
    cookies = {"adbc.flight.sql.rpc.with_cookie_middleware": "true",
               "adbc.flight.sql.authorization_header": f"Bearer {TOKEN}"}
    with flightsql.connect(ingest_server.uri, db_kwargs=cookies) as mine, \
            flightsql.connect(ingest_server.uri, db_kwargs=cookies) as theirs:
        # A session option makes the session first: the ADBC driver keeps the cookie of
        # an action's reply before the call returns, while an upload's reply cookie was
        # once kept only after the next call had started (one run in many).
        mine.adbc_connection.set_options(**{"adbc.flight.sql.session.option.schema": "public"})
        with mine.cursor() as cur:
            assert cur.adbc_ingest("scratch", _data(0, 3), mode="create", temporary=True) == 3
            assert cur.adbc_ingest("scratch", _data(3, 2), mode="append", temporary=True) == 2
        assert fetch_rows(mine, "SELECT count(*), max(id) FROM scratch") == [(5, 4)]
        with pytest.raises(adbc_driver_manager.Error) as err:
            fetch_rows(theirs, "SELECT count(*) FROM scratch")
        assert err.value.status_code == adbc_driver_manager.AdbcStatusCode.NOT_FOUND
        tables = mine.adbc_get_objects(depth="tables", db_schema_filter="public").read_all()
        assert "scratch" not in str(tables.to_pylist())  # never written to the catalog
