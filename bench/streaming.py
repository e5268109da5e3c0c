"""Result streaming: a big `SELECT *` through ADBC from Krishiv vs. a bare pyarrow Flight server.

A table of `--rows` rows and 4 columns (bench.transport's `make_table`: int64, double,
int64, int32; 28 bytes a row) is created in an embedded Krishiv server with ADBC bulk
ingest, then fetched with `SELECT * FROM stream_table` through the ADBC DB-API
(`execute`, `fetch_arrow_table`). The same table is served from memory by a bare pyarrow
Flight server in its own process and fetched with `do_get(...).read_all()`. The two are
fetched alternately (one warm-up each, then `--runs` rounds); reported: the median MB/s
of each (MB = fetched `table.nbytes` / 1e6) and their ratio. Every fetch's row count is
checked.

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
import pyarrow.flight as flight

from bench.common import adbc_connect, markdown_table
from bench.transport import _PyarrowServer, make_table


def _serve_bare(rows: int, batch_rows: int, ready: multiprocessing.Queue,
                stop: multiprocessing.synchronize.Event) -> None:
    """A pyarrow Flight server whose every DoGet returns the table (in a spawned process)."""
    server = _PyarrowServer("grpc://127.0.0.1:0",
                            make_table(rows).to_batches(max_chunksize=batch_rows))
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

                def pyarrow_flight() -> pa.Table:
                    return client.do_get(flight.Ticket(b"all")).read_all()

                _timed(krishiv, args.rows, "krishiv")  # warm-up
                _timed(pyarrow_flight, args.rows, "bare pyarrow")
                rates: dict[str, list[float]] = {"krishiv": [], "bare": []}
                for _ in range(args.runs):
                    rates["krishiv"].append(_timed(krishiv, args.rows, "krishiv"))
                    rates["bare"].append(_timed(pyarrow_flight, args.rows, "bare pyarrow"))
                client.close()
                cursor.close()
                conn.close()
        finally:
            stop.set()
            if bare.pid is not None:
                bare.join(timeout=30)
            if bare.is_alive():
                bare.terminate()
                bare.join()
    k, b = statistics.median(rates["krishiv"]), statistics.median(rates["bare"])
    print(f"Result streaming: {args.rows:,} rows x 4 columns, {table.nbytes / 1e6:.0f} MB "
          f"(Arrow nbytes); Krishiv embedded, ADBC DB-API execute + fetch_arrow_table; bare "
          f"pyarrow Flight server ({args.batch_rows}-row batches) in its own process, "
          f"do_get().read_all(); fetched alternately, 1 warm-up each, median of {args.runs}; "
          f"ingest of the table took {ingest_s:.1f} s")
    print()
    print(markdown_table(
        ["Krishiv ADBC MB/s", "bare pyarrow Flight MB/s", "ratio krishiv/bare",
         "Krishiv runs MB/s", "bare runs MB/s"],
        [[f"{k:.0f}", f"{b:.0f}", f"{k / b:.2f}",
          " ".join(f"{r:.0f}" for r in rates["krishiv"]),
          " ".join(f"{r:.0f}" for r in rates["bare"])]]))


if __name__ == "__main__":
    main()
