"""Concurrency: 1, 4, 16 and 64 ADBC client processes on a mixed query set, one Krishiv server.

TPC-H demo data at `--scale` is loaded into an embedded Iceberg catalog (`--warehouse` or
a temporary folder) and one embedded Krishiv server is started over it. The mixed set:
TPC-H q1, q3, q6, q10, q14 (DuckDB's texts), a point lookup on `nation` and
`count(*)` of `orders`; expected answers come from DuckDB over the same Parquet files.
At each level every client is a process of its own (multiprocessing "spawn"): it
connects with the ADBC Flight SQL driver, runs one query to warm up, waits for a shared
start event, then runs the set round-robin from a random offset, `--warmup` seconds
untimed (the server grows its pool of query worker processes) and `--seconds` timed,
recording each query's latency and outcome (right answer, wrong answer, or the gRPC
status of its error). Reported per level: queries, throughput, p50/p99 latency of the
answered queries, wrong answers (must be 0), errors by status, and throughput as a
fraction of the peak over all levels.

Admission phase: a second server with `--max-concurrent-queries 2 --max-queued-queries 4`
and `--admission-clients` (64) processes running q1 in a loop for `--seconds`; counts the
queries refused with UNAVAILABLE and compares the time to a refusal with the latency
of accepted queries.

    python -m bench concurrency [--scale 0.1] [--seconds 20] [--warmup 3] [--levels 1,4,16,64]
                                [--admission-clients 64] [--warehouse DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.synchronize
import os
import queue
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import adbc_connect, error_status, markdown_table, ms, percentile

if TYPE_CHECKING:
    from tests.reference import Answer

_MIXED_TPCH = (1, 3, 6, 10, 14)
_EXTRA = {
    "point": "SELECT n_name FROM nation WHERE n_nationkey = 7",
    "count": "SELECT count(*) FROM orders",
}
_ADMISSION_ARGS = ("--max-concurrent-queries", "2", "--max-queued-queries", "4")


@dataclass
class ClientResult:
    """What one client process did: (query name, seconds, outcome, answer id) per query.

    Outcome is "answered" or the gRPC status of the error. Answers are kept once per
    distinct value (`answers[(name, id)]`) and checked in the parent, so the client
    processes need neither DuckDB nor the reference code.
    """

    elapsed: float = 0.0
    records: list[tuple[str, float, str, int]] = field(default_factory=list)
    answers: dict[tuple[str, int], list[tuple[Any, ...]]] = field(default_factory=dict)
    error_examples: dict[str, str] = field(default_factory=dict)


def _client(port: int, queries: list[tuple[str, str]], warmup: float, seconds: float,
            seed: int, ready: multiprocessing.Queue, start: multiprocessing.synchronize.Event,
            results: multiprocessing.Queue) -> None:
    """One client process: connect, run one query, wait for `start`, run the set
    round-robin for `warmup` seconds untimed, then for `seconds` timed."""
    try:
        conn = adbc_connect(port)
        cursor = conn.cursor()
        for attempt in range(100):  # a server with a small queue may refuse the warm-up
            try:
                cursor.execute(_EXTRA["point"])
                cursor.fetchall()
                break
            except Exception as exc:
                if error_status(exc) != "UNAVAILABLE" or attempt == 99:
                    raise
                cursor.close()
                cursor = conn.cursor()
                time.sleep(0.05 + random.random() * 0.2)
    except Exception as exc:
        ready.put(f"client {seed} could not start: {exc}")
        return
    ready.put("")
    if not start.wait(timeout=900):
        return
    index = random.Random(seed).randrange(len(queries))
    warm_until = time.perf_counter() + warmup
    while time.perf_counter() < warm_until:
        try:
            cursor.execute(queries[index % len(queries)][1])
            cursor.fetchall()
        except Exception:
            cursor.close()
            cursor = conn.cursor()
        index += 1
    result = ClientResult()
    seen: dict[tuple[str, str], int] = {}
    began = time.perf_counter()
    deadline = began + seconds
    while time.perf_counter() < deadline:
        name, text = queries[index % len(queries)]
        index += 1
        started = time.perf_counter()
        try:
            cursor.execute(text)
            rows = cursor.fetchall()
        except Exception as exc:
            status = error_status(exc)
            result.records.append((name, time.perf_counter() - started, status, -1))
            result.error_examples.setdefault(status, " ".join(str(exc).split())[:300])
            cursor.close()  # a failed statement may leave the cursor unusable
            cursor = conn.cursor()
            continue
        took = time.perf_counter() - started
        key = (name, repr(rows))
        if key not in seen:
            seen[key] = len(seen)
            result.answers[(name, seen[key])] = rows
        result.records.append((name, took, "answered", seen[key]))
    result.elapsed = time.perf_counter() - began
    cursor.close()
    conn.close()
    results.put(result)


@contextmanager
def _clients(count: int, port: int, queries: list[tuple[str, str]], warmup: float,
             seconds: float) -> Iterator[list[ClientResult]]:
    """Start `count` client processes, release them together, yield their results.

    Every process is joined (or terminated) on the way out, also on errors.
    """
    context = multiprocessing.get_context("spawn")
    ready: multiprocessing.Queue = context.Queue()
    results: multiprocessing.Queue = context.Queue()
    start = context.Event()
    processes = [context.Process(target=_client, daemon=True,
                                 args=(port, queries, warmup, seconds, seed, ready, start,
                                       results))
                 for seed in range(count)]
    try:
        for process in processes:
            process.start()
        for _ in processes:
            problem = ready.get(timeout=600)
            if problem:
                raise SystemExit(problem)
        start.set()
        collected = []
        for _ in processes:
            try:
                collected.append(results.get(timeout=warmup + seconds + 600))
            except queue.Empty:
                raise SystemExit("a client process gave no result") from None
        yield collected
    finally:
        for process in processes:
            process.join(timeout=10)
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join()
        ready.close()
        results.close()


@dataclass
class _Level:
    clients: int
    queries: int
    seconds: float
    latencies: dict[str, list[float]]  # per query name, answered queries only
    wrong: list[str]
    errors: Counter[str]
    error_examples: dict[str, str]
    error_latencies: dict[str, list[float]] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.queries / self.seconds

    def all_latencies(self) -> list[float]:
        return [t for times in self.latencies.values() for t in times]


def _summarize(clients: int, results: list[ClientResult],
               expected: dict[str, Answer]) -> _Level:
    level = _Level(clients, 0, max(r.elapsed for r in results), {}, [], Counter(), {})
    for result in results:
        correct = {key: expected[key[0]].matches(rows) for key, rows in result.answers.items()}
        for key, rows in result.answers.items():
            if not correct[key]:
                level.wrong.append(f"{key[0]}: {rows[:3]!r}")
        for name, took, outcome, answer in result.records:
            level.queries += 1
            if outcome != "answered":
                level.errors[outcome] += 1
                level.error_latencies.setdefault(outcome, []).append(took)
                continue
            level.latencies.setdefault(name, []).append(took)
            if not correct[(name, answer)]:
                level.errors["WRONG ANSWER"] += 1
        level.error_examples.update(result.error_examples)
    return level


def _errors_text(errors: Counter[str]) -> str:
    return ", ".join(f"{status} {count}" for status, count in sorted(errors.items())) or "0"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0,
                        help="seconds all clients of a level run the set untimed first "
                             "(the server starts a worker process per concurrent query)")
    parser.add_argument("--levels", default="1,4,16,64")
    parser.add_argument("--admission-clients", type=int, default=64,
                        help="clients of the admission phase (0: skip it)")
    parser.add_argument("--warehouse", type=Path, default=None)
    args = parser.parse_args(argv)
    levels = [int(n) for n in args.levels.split(",")]
    with tempfile.TemporaryDirectory(prefix="krishiv-bench-concurrency-") as tmp:
        _run(args, levels, args.warehouse or Path(tmp))


def _run(args: argparse.Namespace, levels: list[int], warehouse: Path) -> None:
    from bench.servers import KrishivMode, running_krishiv
    from catalog import IcebergCatalog
    from engine.demo import load_tpch_demo
    from tests.reference import duckdb_over_catalog, reference_answer, tpch_queries

    catalog = IcebergCatalog.embedded(str(warehouse))
    load_tpch_demo(catalog, args.scale, scratch=warehouse)
    duck = duckdb_over_catalog(catalog)
    texts = tpch_queries(duck)
    queries = [(f"q{n}", texts[n]) for n in _MIXED_TPCH] + list(_EXTRA.items())
    expected = {name: reference_answer(duck, text) for name, text in queries}
    duck.close()

    results: list[_Level] = []
    with running_krishiv(KrishivMode(), warehouse, args.scale) as port:
        for count in levels:
            with _clients(count, port, queries, args.warmup, args.seconds) as collected:
                results.append(_summarize(count, collected, expected))
            print(f"... {count} clients: {results[-1].queries} queries", file=sys.stderr,
                  flush=True)
    admission: _Level | None = None
    if args.admission_clients:
        with running_krishiv(KrishivMode(extra_args=_ADMISSION_ARGS), warehouse, args.scale,
                             log_name="bench-server-admission.log") as port, \
                _clients(args.admission_clients, port, queries[:1], args.warmup,
                         args.seconds) as collected:
            admission = _summarize(args.admission_clients, collected, expected)

    names = [name for name, _ in queries]
    from engine.config import default_running_queries  # not at the top: clients import this

    running = os.environ.get("KRISHIV_MAX_CONCURRENT_QUERIES") or default_running_queries()
    print(f"\nConcurrency: Krishiv embedded ({running} running, 64 queued), TPC-H SF "
          f"{args.scale:g}, ADBC clients each in its own process, {args.warmup:g} s warm-up "
          f"then {args.seconds:g} s per level, mixed set {', '.join(names)} round-robin "
          "from a random offset; latency of answered queries")
    print()
    peak = max(level.throughput for level in results)
    print(markdown_table(
        ["clients", "queries", "queries/s", "p50 ms", "p99 ms", "wrong", "errors",
         "of peak"],
        [[level.clients, level.queries, f"{level.throughput:.1f}",
          ms(percentile(level.all_latencies(), 50)), ms(percentile(level.all_latencies(), 99)),
          len(level.wrong), _errors_text(level.errors), f"{level.throughput / peak:.2f}"]
         for level in results]))
    print()
    print("p50 latency per query, ms")
    print()
    print(markdown_table(
        ["clients", *names],
        [[level.clients, *(ms(percentile(level.latencies.get(n, []), 50)) for n in names)]
         for level in results]))
    for level in [*results, *([admission] if admission else [])]:
        if level.wrong:
            print(f"\n!!! WRONG ANSWERS with {level.clients} clients: {level.wrong[:5]}")
        for status, example in level.error_examples.items():
            print(f"\nerror {status} with {level.clients} clients, e.g.: {example}")
    if admission is None:
        return
    accepted = admission.latencies.get("q1", [])
    rejected = admission.error_latencies.get("UNAVAILABLE", [])
    print(f"\nAdmission: a second server with {' '.join(_ADMISSION_ARGS)}, "
          f"{args.admission_clients} client processes running q1 in a loop for "
          f"{args.warmup:g} s warm-up then {args.seconds:g} s")
    print()
    print(markdown_table(
        ["outcome", "queries", "p50 ms", "p99 ms", "max ms"],
        [["accepted (answered)", len(accepted), ms(percentile(accepted, 50)),
          ms(percentile(accepted, 99)), ms(max(accepted, default=float("nan")))],
         ["refused UNAVAILABLE", len(rejected), ms(percentile(rejected, 50)),
          ms(percentile(rejected, 99)), ms(max(rejected, default=float("nan")))],
         ["other errors", sum(c for s, c in admission.errors.items() if s != "UNAVAILABLE"),
          "", "", ""]]))


if __name__ == "__main__":
    main()
