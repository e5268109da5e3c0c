"""TPC-H side by side: Krishiv (ADBC), DataFusion in-process, DuckDB in-process.

Krishiv runs embedded, or with `--executors N` as a single-node cluster (the distributed
path: stages, shuffles over Flight), or with `--separate` as a coordinator and N executor
processes started one by one as the README's distributed mode does. All engines read the
same Parquet files (the Iceberg snapshot files Krishiv serves); every Krishiv answer is
checked against DuckDB's. Warm runs; the median of `--runs`.

    python -m bench.tpch --scale 1 [--runs 3] [--queries 1,3,6] [--warehouse DIR]
                         [--executors 2 [--separate] [--shuffle-partitions 4]]
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import datafusion

from catalog import IcebergCatalog, TableIdent
from engine.demo import DEMO_NAMESPACE, TPCH_TABLES, load_tpch_demo
from tests.reference import as_multiset, duckdb_over_catalog, tpch_queries
from tests.servers import free_port


def _median_seconds(run: Callable[[], object], runs: int) -> tuple[float, object]:
    run()  # warm-up
    times, result = [], None
    for _ in range(runs):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def _datafusion(catalog: IcebergCatalog) -> datafusion.SessionContext:
    config = datafusion.SessionConfig().set(
        "datafusion.execution.parquet.schema_force_view_types", "false")
    ctx = datafusion.SessionContext(config)
    for name in TPCH_TABLES:
        files = catalog.scan(TableIdent(DEMO_NAMESPACE, name)).data_files
        frame = ctx.read_parquet(files[0])
        for path in files[1:]:
            frame = frame.union(ctx.read_parquet(path))
        ctx.register_view(name, frame)
    return ctx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--queries", default="1-22")
    parser.add_argument("--warehouse", type=Path, default=None)
    parser.add_argument("--executors", type=int, default=0)
    parser.add_argument("--shuffle-partitions", type=int, default=4)
    parser.add_argument("--separate", action="store_true",
                        help="start `krishiv coordinator` and `krishiv executor` processes "
                             "(distributed mode) instead of `krishiv serve --executors N`")
    args = parser.parse_args()
    numbers = _parse_queries(args.queries)
    warehouse = args.warehouse or Path(tempfile.mkdtemp(prefix="krishiv-bench-"))
    catalog = IcebergCatalog.embedded(str(warehouse))
    load_tpch_demo(catalog, args.scale, scratch=warehouse)
    duck = duckdb_over_catalog(catalog)
    texts = tpch_queries(duck)
    ctx = _datafusion(catalog)
    port = free_port()
    log_path = warehouse / "bench-server.log"
    processes = _start_krishiv(args, warehouse, port, log_path)
    try:
        warnings.filterwarnings("ignore", message="Cannot disable autocommit")
        conn = flightsql.connect(f"grpc://127.0.0.1:{port}")
        cursor = conn.cursor()

        def krishiv(text: str) -> Callable[[], object]:
            def run() -> object:
                cursor.execute(text)
                return cursor.fetchall()
            return run

        mode = "embedded"
        if args.executors:
            how = "started by hand" if args.separate else "of `serve --executors`"
            mode = (f"coordinator + {args.executors} executors {how}, "
                    f"{args.shuffle_partitions} shuffle partitions")
        print(f"TPC-H SF {args.scale:g}, Krishiv {mode}, median of {args.runs} warm runs, "
              "seconds")
        print(f"{'query':>5} {'krishiv':>9} {'datafusion':>11} {'duckdb':>8} "
              f"{'k/df':>6} {'k/duck':>7} answer")
        ratios_df, ratios_duck = [], []
        for number in numbers:
            text = texts[number]
            k_time, k_rows = _median_seconds(krishiv(text), args.runs)
            d_time, _ = _median_seconds(lambda t=text: ctx.sql(t).collect(), args.runs)
            u_time, expected = _median_seconds(lambda t=text: duck.execute(t).fetchall(),
                                               args.runs)
            correct = as_multiset(k_rows) == as_multiset(expected)  # type: ignore[arg-type]
            ratios_df.append(k_time / d_time)
            ratios_duck.append(k_time / u_time)
            print(f"{number:>5} {k_time:9.3f} {d_time:11.3f} {u_time:8.3f} "
                  f"{k_time / d_time:6.2f} {k_time / u_time:7.2f} "
                  f"{'ok' if correct else 'WRONG'}")
        print(f"geometric mean ratio krishiv/datafusion {_geomean(ratios_df):.2f}, "
              f"krishiv/duckdb {_geomean(ratios_duck):.2f}")
        cursor.close()
        conn.close()
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=30)


def _start_krishiv(args: argparse.Namespace, warehouse: Path, port: int, log_path: Path
                   ) -> list[subprocess.Popen[bytes]]:
    """The server (and executors) as the chosen mode runs them, ready for queries."""
    krishiv = str(Path(sys.executable).parent / "krishiv")
    common = ["--port", str(port), "--warehouse", str(warehouse), "--default-schema",
              DEMO_NAMESPACE, "--demo", "--demo-scale", f"{args.scale:g}"]
    cluster = ["--shuffle-partitions", str(args.shuffle_partitions)]
    env = {**os.environ, "KRISHIV_EXECUTOR_TASK_BEARER_TOKEN": secrets.token_urlsafe(16)}
    if not args.executors:
        commands = [[krishiv, "serve", *common]]
    elif not args.separate:
        commands = [[krishiv, "serve", *common, *cluster, "--executors", str(args.executors)]]
    else:
        commands = [[krishiv, "coordinator", *common, *cluster]] + [
            [krishiv, "executor", "--coordinator", f"grpc://127.0.0.1:{port}", "--port", "0",
             "--warehouse", str(warehouse), "--work-dir", str(warehouse / f"executor-{i}")]
            for i in range(args.executors)]
    processes: list[subprocess.Popen[bytes]] = []
    with open(log_path, "w") as log:
        for number, command in enumerate(commands):
            processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                              env=env))
            if number == 0:
                _wait_for_line(log_path, "serving Flight SQL", processes[0])
    if args.executors:
        _wait_for_line(log_path, "joined at", processes[0], args.executors)
    return processes


def _wait_for_line(path: Path, text: str, server: subprocess.Popen[bytes],
                   count: int = 1) -> None:
    deadline = time.monotonic() + 600
    while path.read_text().count(text) < count:
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"server did not start; see {path}")
        time.sleep(0.2)


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _parse_queries(spec: str) -> list[int]:
    numbers: list[int] = []
    for part in spec.split(","):
        low, _, high = part.partition("-")
        numbers += list(range(int(low), int(high or low) + 1))
    return numbers


if __name__ == "__main__":
    main()
