"""`SELECT 1` round-trip latency through ADBC DB-API against an embedded Krishiv server.

Loops, each `--warmup` untimed runs, then `--runs` timed runs in `--rounds` rounds:

- ADBC, new cursor per run: `conn.cursor()`, `execute("SELECT 1")` (the driver prepares,
  then runs: CreatePreparedStatement, GetFlightInfo, DoGet), `fetchall()`, `close()`;
  the answer must be `[(1,)]`.
- ADBC, one cursor reused for every run (`execute` + `fetchall`).
- raw pyarrow Flight client `list_actions()`: one gRPC round trip through the same
  server's transport, no SQL; a floor for context.
- the two ADBC loops again against two do-nothing Flight SQL responders
  (bench.flightsql_stub) giving the same one-row answers: one on pyarrow's C++ server,
  what the client's round trips cost by themselves; one on Krishiv's own transport
  (grpcio with flight_server.grpc_shortcuts), what they cost through that transport.

Each round runs every loop once against each server, so a slow spell of this shared
machine weighs on all of them alike. Reports p50, p90, p99 and max in milliseconds over
all rounds, Krishiv's p50 over the C++ stub's, and how Krishiv's p50 splits: the C++
stub's, what Krishiv's transport adds to it, and what Krishiv's own work adds on top.

    python -m bench latency [--runs 1000] [--warmup 50] [--rounds 10]
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
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    from bench.servers import KrishivMode, running_krishiv

    results: dict[str, list[float]] = {}
    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="krishiv-bench-latency-"))
        port = stack.enter_context(running_krishiv(KrishivMode(), Path(tmp), scale=0.01))
        loops = stack.enter_context(_adbc_loops(port))
        client = flight.connect(f"grpc://127.0.0.1:{port}")
        stack.callback(client.close)
        loops["pyarrow Flight list_actions()"] = client.list_actions
        for against, on_krishiv_transport in ((_STUB, False), (_OUR_STUB, True)):
            stub_port = stack.enter_context(running_stub(on_krishiv_transport))
            for name, loop in stack.enter_context(_adbc_loops(stub_port)).items():
                loops[f"{name}, {against}"] = loop
        for loop in loops.values():
            _latencies(loop, args.warmup, 0)
        rounds = max(1, args.rounds)
        per_round = max(1, args.runs // rounds)
        for _ in range(rounds):
            for name, loop in loops.items():
                results.setdefault(name, []).extend(_latencies(loop, 0, per_round))
    print(f"Round-trip latency, Krishiv embedded on 127.0.0.1, {per_round * rounds} "
          f"timed runs per loop in {rounds} alternating rounds after {args.warmup} "
          "warm-up runs, one client thread, milliseconds")
    print()
    print(markdown_table(
        ["loop", "p50 ms", "p90 ms", "p99 ms", "max ms", "p50 / stub's"],
        [[name, ms(percentile(t, 50)), ms(percentile(t, 90)), ms(percentile(t, 99)),
          ms(max(t)), _to_stub(name, results)] for name, t in results.items()]))
    print()
    print("Where Krishiv's p50 goes: the C++ stub's p50 (the client and one gRPC server), "
          "what Krishiv's transport adds to it, what Krishiv's own work adds on top")
    print()
    print(markdown_table(
        ["loop", "Krishiv p50 ms", "C++ stub", "+ transport", "+ Krishiv's work"],
        [_split(name, results) for name in _KRISHIV_LOOPS]))


_STUB = "against a do-nothing Flight SQL stub"
_OUR_STUB = "against the same stub on Krishiv's transport"
_KRISHIV_LOOPS = ("ADBC SELECT 1, new cursor per run", "ADBC SELECT 1, one cursor reused")


def _to_stub(name: str, results: dict[str, list[float]]) -> str:
    stub = results.get(f"{name}, {_STUB}")
    if stub is None:
        return ""
    return f"{percentile(results[name], 50) / percentile(stub, 50):.2f}"


def _split(name: str, results: dict[str, list[float]]) -> list[str]:
    krishiv, stub, our_stub = (percentile(results[key], 50) for key in
                               (name, f"{name}, {_STUB}", f"{name}, {_OUR_STUB}"))
    return [name, ms(krishiv), ms(stub), ms(our_stub - stub), ms(krishiv - our_stub)]


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
