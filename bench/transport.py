"""DoGet throughput: Krishiv's grpcio Flight transport vs. pyarrow's Flight server.

Both serve the same in-memory table (default 10M rows, 4 columns, 64k-row batches) from
a separate process; one pyarrow Flight client fetches it repeatedly. Reports the median
MB/s of each and their ratio, measured in the same run.

    python -m bench.transport [--rows N] [--runs K] [--batch-rows R]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight

from bench.flightsql_stub import serve_until_stopped
from flight_server.generated import Flight_pb2 as fpb
from flight_server.ipc import PutStream
from flight_server.transport import Call, FlightService, TransportConfig, start_flight_server


def make_table(rows: int) -> pa.Table:
    index = pa.array(range(rows), pa.int64())
    return pa.table({
        "a": index,
        "b": pc.multiply(index, 2.5),
        "c": pc.bit_wise_and(index, 1023),
        "d": pc.cast(pc.bit_wise_and(index, 65535), pa.int32()),
    })


class _TableHandler:
    def __init__(self, batches: list[pa.RecordBatch]) -> None:
        self._batches = batches

    def do_get(self, call: Call, ticket: bytes) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        return self._batches[0].schema, iter(self._batches)

    def get_flight_info(self, call: Call, descriptor: fpb.FlightDescriptor) -> fpb.FlightInfo:
        raise NotImplementedError

    def get_schema(self, call: Call, descriptor: fpb.FlightDescriptor) -> pa.Schema:
        raise NotImplementedError

    def do_put(self, call: Call, upload: PutStream) -> Iterator[bytes]:
        raise NotImplementedError

    def do_action(self, call: Call, kind: str, body: bytes) -> Iterator[bytes]:
        raise NotImplementedError

    def list_actions(self) -> list[tuple[str, str]]:
        return []

    def answers_at_once(self, method: str, request: Any) -> bool:
        return False


class _PyarrowServer(flight.FlightServerBase):
    def __init__(self, location: str, batches: list[pa.RecordBatch]) -> None:
        super().__init__(location)
        self._table = pa.Table.from_batches(batches)

    def do_get(self, context: flight.ServerCallContext, ticket: flight.Ticket
               ) -> flight.FlightDataStream:
        return flight.RecordBatchStream(self._table)


def _serve(kind: str, rows: int, batch_rows: int, ready: multiprocessing.Queue,
           stop: multiprocessing.Event) -> None:
    batches = make_table(rows).to_batches(max_chunksize=batch_rows)
    if kind == "krishiv":
        service = FlightService(_TableHandler(batches), lambda headers: ("bench", []))
        server, port = start_flight_server(service, "127.0.0.1", 0, TransportConfig())
        ready.put(port)
        stop.wait()
        server.stop(0)
    else:
        serve_until_stopped(_PyarrowServer("grpc://127.0.0.1:0", batches), ready, stop)


def measure(kind: str, rows: int, batch_rows: int, runs: int) -> float:
    """Median MB/s of `runs` full fetches from a `kind` server in its own process."""
    context = multiprocessing.get_context("spawn")
    ready: multiprocessing.Queue = context.Queue()
    stop = context.Event()
    process = context.Process(target=_serve, args=(kind, rows, batch_rows, ready, stop))
    process.start()
    try:
        port = ready.get(timeout=120)
        client = flight.connect(f"grpc://127.0.0.1:{port}")
        rates = []
        for _ in range(runs):
            started = time.perf_counter()
            table = client.do_get(flight.Ticket(b"all")).read_all()
            rates.append(table.nbytes / (time.perf_counter() - started) / 1e6)
        client.close()
        return statistics.median(rates)
    finally:
        stop.set()
        process.join(timeout=30)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="DoGet throughput, grpcio vs pyarrow")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch-rows", type=int, default=65536)
    args = parser.parse_args(argv)
    results = {
        kind: measure(kind, args.rows, args.batch_rows, args.runs)
        for kind in ("krishiv", "pyarrow")
    }
    for kind, rate in results.items():
        print(f"{kind:8s} median {rate:8.0f} MB/s")
    print(f"ratio krishiv/pyarrow: {results['krishiv'] / results['pyarrow']:.2f}")


if __name__ == "__main__":
    main()
