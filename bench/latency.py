"""`SELECT 1` round-trip latency through ADBC DB-API against an embedded Krishiv server.

Three loops against one server, each `--warmup` untimed runs then `--runs` timed runs:

- ADBC, new cursor per run: `conn.cursor()`, `execute("SELECT 1")` (the driver prepares,
  then runs: CreatePreparedStatement, GetFlightInfo, DoGet), `fetchall()`, `close()`;
  the answer must be `[(1,)]`.
- ADBC, one cursor reused for every run (`execute` + `fetchall`).
- raw pyarrow Flight client `list_actions()`: one gRPC round trip through the same
  server's transport, no SQL; a floor for context.
- the two ADBC loops again against bench.flightsql_stub, a Flight SQL responder on
  pyarrow's C++ server that does no work: what the client's round trips cost by themselves.

Reports p50, p90, p99 and max in milliseconds.

    python -m bench latency [--runs 1000] [--warmup 50]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pyarrow.flight as flight

from bench.common import adbc_connect, markdown_table, ms, percentile
from bench.flightsql_stub import running_stub


def _latencies(run: Callable[[], None], warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args(argv)
    from bench.servers import KrishivMode, running_krishiv

    results: dict[str, list[float]] = {}
    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="krishiv-bench-latency-"))
        port = stack.enter_context(running_krishiv(KrishivMode(), Path(tmp), scale=0.01))
        loops = stack.enter_context(_adbc_loops(port))
        client = flight.connect(f"grpc://127.0.0.1:{port}")

        def list_actions() -> None:
            client.list_actions()

        for name, loop in loops.items():
            results[name] = _latencies(loop, args.warmup, args.runs)
        results["pyarrow Flight list_actions()"] = _latencies(list_actions, args.warmup,
                                                               args.runs)
        client.close()
    with running_stub() as port, _adbc_loops(port) as loops:
        for name, loop in loops.items():
            results[f"{name}, against a do-nothing Flight SQL stub"] = _latencies(
                loop, args.warmup, args.runs)
    print(f"Round-trip latency, Krishiv embedded on 127.0.0.1, {args.runs} timed runs after "
          f"{args.warmup} warm-up runs per loop, one client thread, milliseconds")
    print()
    print(markdown_table(
        ["loop", "p50 ms", "p90 ms", "p99 ms", "max ms"],
        [[name, ms(percentile(t, 50)), ms(percentile(t, 90)), ms(percentile(t, 99)),
          ms(max(t))] for name, t in results.items()]))


@contextmanager
def _adbc_loops(port: int) -> Iterator[dict[str, Callable[[], None]]]:
    """The two ADBC loops (new cursor per run; one cursor reused) on one connection."""
    conn = adbc_connect(port)
    reused = conn.cursor()

    def new_cursor() -> None:
        cursor = conn.cursor()
        cursor.execute("SELECT 1")
        rows = cursor.fetchall()
        cursor.close()
        _check(rows)

    def same_cursor() -> None:
        reused.execute("SELECT 1")
        _check(reused.fetchall())

    try:
        yield {"ADBC SELECT 1, new cursor per run": new_cursor,
               "ADBC SELECT 1, one cursor reused": same_cursor}
    finally:
        reused.close()
        conn.close()


def _check(rows: list[tuple[Any, ...]]) -> None:
    if rows != [(1,)]:
        raise SystemExit(f"SELECT 1 answered {rows!r}")


if __name__ == "__main__":
    main()
