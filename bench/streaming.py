"""Result streaming: a big `SELECT *` through ADBC from Krishiv vs. a bare pyarrow Flight server.

A table of `--rows` rows and 4 columns (bench.transport's `make_table`: int64, double,
int64, int32; 28 bytes a row) is created in an embedded Krishiv server with ADBC bulk
ingest. A second Krishiv server over the same warehouse runs with `--read-cache 0`: the
first keeps the result of this plain read in memory after its first fetch (the warm-up)
and sends it again, the second decodes the Parquet files at every fetch. The same table
is served from memory by a bare pyarrow Flight server in its own process
(bench.flightsql_stub: it answers any statement with the table). A second bare server
does the same work as the uncached Krishiv: each DoGet reads the Iceberg table's Parquet
files (pyarrow.dataset) and streams them. All four are fetched by the same client, the
ADBC DB-API (`execute("SELECT * FROM stream_table")`, `fetch_arrow_table()`), in turn
(`--warmup` rounds, then `--runs`); reported: the median MB/s of each (MB = fetched
`table.nbytes` / 1e6) and each Krishiv's ratio to each bare server. Every fetch's row
count is checked.

    python -m bench streaming [--rows 10000000] [--runs 5] [--batch-rows 65536]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import multiprocessing.synchronize
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pds

from bench.common import adbc_connect, markdown_table
from bench.flightsql_stub import FlightSqlStub, serve_until_stopped
from bench.transport import make_table
from catalog import IcebergCatalog, TableIdent
from engine.demo import DEMO_NAMESPACE


def _serve_bare(rows: int, batch_rows: int, ready: multiprocessing.Queue,
                stop: multiprocessing.synchronize.Event) -> None:
    """A bare server whose every DoGet returns the table (in a spawned process)."""
    table = pa.Table.from_batches(make_table(rows).to_batches(max_chunksize=batch_rows))
    stub = FlightSqlStub("grpc://127.0.0.1:0", lambda: table, table.schema)
    serve_until_stopped(stub, ready, stop)


def _serve_files(files: list[str], ready: multiprocessing.Queue,
                 stop: multiprocessing.synchronize.Event) -> None:
    """A bare server whose every DoGet reads `files` (Parquet) and streams their rows."""
    dataset = pds.dataset(files, format="parquet")
    stub = FlightSqlStub("grpc://127.0.0.1:0", lambda: dataset.scanner().to_reader(),
                         dataset.schema)
    serve_until_stopped(stub, ready, stop)


def _select_all(clients: contextlib.ExitStack, port: int) -> Callable[[], pa.Table]:
    """A fetch of `SELECT * FROM stream_table` from the server on `port`, through ADBC."""
    conn = clients.enter_context(contextlib.closing(adbc_connect(port)))
    cursor = clients.enter_context(contextlib.closing(conn.cursor()))

    def fetch() -> pa.Table:
        cursor.execute("SELECT * FROM stream_table")
        return cursor.fetch_arrow_table()

    return fetch


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
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed rounds before the timed ones")
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
                with adbc_connect(port) as conn, conn.cursor() as cursor:
                    started = time.perf_counter()
                    # Sent as 64k-row batches: one gRPC message each, the driver refuses
                    # messages over 16 MiB.
                    cursor.adbc_ingest("stream_table", pa.Table.from_batches(
                        table.to_batches(max_chunksize=65536)), mode="create")
                    ingest_s = time.perf_counter() - started

                files = list(IcebergCatalog.embedded(tmp).scan(
                    TableIdent(DEMO_NAMESPACE, "stream_table")).data_files)
                servers.append(context.Process(target=_serve_files,
                                               args=(files, files_ready, stop)))
                servers[-1].start()
                with contextlib.ExitStack() as clients:
                    uncached = clients.enter_context(running_krishiv(
                        KrishivMode(extra_args=("--read-cache", "0")), Path(tmp), scale=0.01,
                        log_name="bench-server-uncached.log"))
                    ports = {"krishiv": port, "uncached": uncached,
                             "bare": ready.get(timeout=300),
                             "files": files_ready.get(timeout=300)}
                    fetches = {name: _select_all(clients, server_port)
                               for name, server_port in ports.items()}
                    for _ in range(args.warmup):
                        for name, fetch in fetches.items():
                            _timed(fetch, args.rows, name)
                    rates: dict[str, list[float]] = {name: [] for name in fetches}
                    for _ in range(args.runs):
                        for name, fetch in fetches.items():
                            rates[name].append(_timed(fetch, args.rows, name))
        finally:
            stop.set()
            for server in servers:
                if server.pid is not None:
                    server.join(timeout=30)
                if server.is_alive():
                    server.terminate()
                    server.join()
    names = ("krishiv", "uncached", "bare", "files")
    k, u, b, f = (statistics.median(rates[name]) for name in names)
    print(f"Result streaming: {args.rows:,} rows x 4 columns, {table.nbytes / 1e6:.0f} MB "
          f"(Arrow nbytes), each server fetched with the ADBC DB-API (execute + "
          f"fetch_arrow_table): Krishiv embedded (the default read cache, filled by the "
          f"first fetch); Krishiv embedded with --read-cache 0; a bare pyarrow Flight server "
          f"holding the table in memory ({args.batch_rows}-row batches) in its own process; "
          f"a bare pyarrow Flight server reading the table's Parquet files per DoGet "
          f"(pyarrow.dataset); fetched in turn, {args.warmup} warm-up round(s), median of "
          f"{args.runs}; ingest of the table took {ingest_s:.1f} s")
    print()
    print(markdown_table(
        ["Krishiv MB/s", "Krishiv uncached MB/s", "bare, from memory MB/s",
         "bare, same Parquet files MB/s", "krishiv/memory", "uncached/files"],
        [[f"{k:.0f}", f"{u:.0f}", f"{b:.0f}", f"{f:.0f}", f"{k / b:.2f}", f"{u / f:.2f}"]]))
    print()
    print(markdown_table(["server", "MB/s of each run"],
                         [[name, " ".join(f"{r:.0f}" for r in rates[name])] for name in names]))


if __name__ == "__main__":
    main()
