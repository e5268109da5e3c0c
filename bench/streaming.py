"""Result streaming: a big `SELECT *` through ADBC from Krishiv vs. a bare pyarrow Flight server.

A table of `--rows` rows and 4 columns (bench.transport's `make_table`: int64, double,
int64, int32; 28 bytes a row) is created in an embedded Krishiv server with ADBC bulk
ingest, then fetched with `SELECT * FROM stream_table` through the ADBC DB-API
(`execute`, `fetch_arrow_table`). The same table is served from memory by a bare pyarrow
Flight server in its own process and fetched with `do_get(...).read_all()`. A second bare
pyarrow Flight server does the same work as Krishiv: each DoGet reads the Iceberg table's
Parquet files (pyarrow.dataset) and streams them. All three are fetched in turn (one
warm-up each, then `--runs` rounds); reported: the median MB/s of each (MB = fetched
`table.nbytes` / 1e6) and Krishiv's ratio to each. Every fetch's row count is checked.

    python -m bench streaming [--rows 10000000] [--runs 5] [--batch-rows 65536]
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.synchronize
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.flight as flight

from bench.common import adbc_connect, markdown_table
from bench.transport import _PyarrowServer, make_table
from catalog import IcebergCatalog, TableIdent
from engine.demo import DEMO_NAMESPACE


def _serve_bare(rows: int, batch_rows: int, ready: multiprocessing.Queue,
                stop: multiprocessing.synchronize.Event) -> None:
    """A pyarrow Flight server whose every DoGet returns the table (in a spawned process)."""
    server = _PyarrowServer("grpc://127.0.0.1:0",
                            make_table(rows).to_batches(max_chunksize=batch_rows))
    ready.put(server.port)
    stop.wait()
    server.shutdown()


class _FilesServer(flight.FlightServerBase):
    """Every DoGet reads `files` (Parquet) and streams their rows."""

    def __init__(self, location: str, files: list[str]) -> None:
        super().__init__(location)
        self._files = files

    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket
               ) -> flight.FlightDataStream:
        return flight.RecordBatchStream(
            pds.dataset(self._files, format="parquet").scanner().to_reader())


def _serve_files(files: list[str], ready: multiprocessing.Queue,
                 stop: multiprocessing.synchronize.Event) -> None:
    server = _FilesServer("grpc://127.0.0.1:0", files)
    ready.put(server.port)
    stop.wait()
    server.shutdown()


def _timed(fetch: Callable[[], pa.Table], rows: int, what: str) -> float:
    """MB/s of one fetch; fails if it did not return `rows` rows."""
    started = time.perf_counter()
    table = fetch()
    seconds = time.perf_counter() - started
    if table.num_rows != rows:
        raise SystemExit(f"{what} returned {table.num_rows} rows, expected {rows}")
    return table.nbytes / 1e6 / seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch-rows", type=int, default=65536,
                        help="batch size of the bare pyarrow server's table")
    args = parser.parse_args(argv)
    from bench.servers import KrishivMode, running_krishiv

    table = make_table(args.rows)
    context = multiprocessing.get_context("spawn")
    ready: multiprocessing.Queue = context.Queue()
    stop = context.Event()
    bare = context.Process(target=_serve_bare, args=(args.rows, args.batch_rows, ready, stop))
    files_ready: multiprocessing.Queue = context.Queue()
    servers = [bare]
    with tempfile.TemporaryDirectory(prefix="krishiv-bench-streaming-") as tmp:
        try:
            bare.start()
            with running_krishiv(KrishivMode(), Path(tmp), scale=0.01) as port:
                conn = adbc_connect(port)
                cursor = conn.cursor()
                started = time.perf_counter()
                # Sent as 64k-row batches: one gRPC message each, the driver refuses
                # messages over 16 MiB.
                cursor.adbc_ingest("stream_table", pa.Table.from_batches(
                    table.to_batches(max_chunksize=65536)), mode="create")
                ingest_s = time.perf_counter() - started

                def krishiv() -> pa.Table:
                    cursor.execute("SELECT * FROM stream_table")
                    return cursor.fetch_arrow_table()

                client = flight.connect(f"grpc://127.0.0.1:{ready.get(timeout=300)}")
                files = list(IcebergCatalog.embedded(tmp).scan(
                    TableIdent(DEMO_NAMESPACE, "stream_table")).data_files)
                servers.append(context.Process(target=_serve_files,
                                               args=(files, files_ready, stop)))
                servers[-1].start()
                files_client = flight.connect(
                    f"grpc://127.0.0.1:{files_ready.get(timeout=300)}")
                fetches: dict[str, Callable[[], pa.Table]] = {
                    "krishiv": krishiv,
                    "bare": lambda: client.do_get(flight.Ticket(b"all")).read_all(),
                    "files": lambda: files_client.do_get(flight.Ticket(b"all")).read_all(),
                }
                for name, fetch in fetches.items():  # warm-up
                    _timed(fetch, args.rows, name)
                rates: dict[str, list[float]] = {name: [] for name in fetches}
                for _ in range(args.runs):
                    for name, fetch in fetches.items():
                        rates[name].append(_timed(fetch, args.rows, name))
                client.close()
                files_client.close()
                cursor.close()
                conn.close()
        finally:
            stop.set()
            for server in servers:
                if server.pid is not None:
                    server.join(timeout=30)
                if server.is_alive():
                    server.terminate()
                    server.join()
    k, b, f = (statistics.median(rates[name]) for name in ("krishiv", "bare", "files"))
    print(f"Result streaming: {args.rows:,} rows x 4 columns, {table.nbytes / 1e6:.0f} MB "
          f"(Arrow nbytes); Krishiv embedded, ADBC DB-API execute + fetch_arrow_table; bare "
          f"pyarrow Flight server ({args.batch_rows}-row batches) in its own process, "
          f"do_get().read_all(); a bare pyarrow Flight server reading the table's Parquet "
          f"files per DoGet (pyarrow.dataset); fetched in turn, 1 warm-up each, median of "
          f"{args.runs}; ingest of the table took {ingest_s:.1f} s")
    print()
    print(markdown_table(
        ["Krishiv ADBC MB/s", "bare pyarrow, from memory MB/s",
         "bare pyarrow, same Parquet files MB/s", "krishiv/memory", "krishiv/files",
         "Krishiv runs", "memory runs", "files runs"],
        [[f"{k:.0f}", f"{b:.0f}", f"{f:.0f}", f"{k / b:.2f}", f"{k / f:.2f}",
          *(" ".join(f"{r:.0f}" for r in rates[name]) for name in ("krishiv", "bare", "files"))]]))


if __name__ == "__main__":
    main()
