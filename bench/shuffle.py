"""Shuffle throughput between 2 executors of `krishiv serve --executors 2`.

TPC-H demo data at `--scale` in an embedded catalog (`--warehouse` or a temporary
folder); the server runs with 2 local executors, `--broadcast-limit 0` (every equi-join
shuffles both inputs) and `--shuffle-partitions` (4). A shuffle-heavy query (default: the
lineitem-orders join on orderkey grouped by o_orderpriority) is run through ADBC: one
warm-up, then `--runs` timed runs, each answer checked against DuckDB over the same
Parquet files. Then `EXPLAIN ANALYZE` of the query gives, per stage, the rows and bytes
its tasks wrote.

What is counted: each task reports the bytes of shuffle input it took from the other
executor: files it read in place (the default for executors on one machine), or with
`--over-flight` (executors run with KRISHIV_LOCAL_SHUFFLE_READS=0) the Arrow bytes it
fetched over Flight DoGet, as they travelled (shuffle files are served uncompressed).
`EXPLAIN ANALYZE` sums them per stage ("bytes fetched from other executors"), next to
the rows and bytes (Arrow IPC files) each stage wrote. Bytes moved per second = all
those bytes / the EXPLAIN ANALYZE run's time, and / the median query time.

    python -m bench shuffle [--scale 1] [--runs 3] [--shuffle-partitions 4]
                            [--query SQL] [--warehouse DIR] [--over-flight]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import adbc_connect, markdown_table

_QUERY = ("SELECT o_orderpriority, count(*) AS lines, sum(l_extendedprice) AS price "
          "FROM lineitem JOIN orders ON l_orderkey = o_orderkey "
          "GROUP BY o_orderpriority ORDER BY o_orderpriority")
_STAGE = re.compile(r"^Stage (\d+): .*?-> (.*?)(?:; ran on (.*?): (\d+) rows, (\d+) bytes "
                    r"written, (\d+) bytes fetched from other executors, ([\d.]+) s in "
                    r"tasks)?$")


@dataclass
class Stage:
    number: int
    target: str
    executors: str
    rows: int
    bytes: int
    fetched_bytes: int  # its tasks' inputs, fetched from the other executor
    task_seconds: float


def _stages(plan: str) -> list[Stage]:
    stages = []
    for line in plan.splitlines():
        found = _STAGE.match(line.strip())
        if found:
            number, target, executors, rows, size, fetched, seconds = found.groups()
            stages.append(Stage(int(number), target, executors or "", int(rows or 0),
                                int(size or 0), int(fetched or 0), float(seconds or 0)))
    return stages


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--shuffle-partitions", type=int, default=4)
    parser.add_argument("--query", default=_QUERY)
    parser.add_argument("--warehouse", type=Path, default=None)
    parser.add_argument("--over-flight", action="store_true",
                        help="executors fetch each other's files over Flight, not in place")
    args = parser.parse_args(argv)
    if args.over_flight:  # the executors `serve` starts inherit it
        os.environ["KRISHIV_LOCAL_SHUFFLE_READS"] = "0"
    with tempfile.TemporaryDirectory(prefix="krishiv-bench-shuffle-") as tmp:
        _run(args, args.warehouse or Path(tmp))


def _run(args: argparse.Namespace, warehouse: Path) -> None:
    from bench.servers import KrishivMode, running_krishiv
    from catalog import IcebergCatalog
    from engine.demo import load_tpch_demo
    from tests.reference import as_multiset, duckdb_over_catalog

    catalog = IcebergCatalog.embedded(str(warehouse))
    load_tpch_demo(catalog, args.scale, scratch=warehouse)
    duck = duckdb_over_catalog(catalog)
    expected = as_multiset(duck.execute(args.query).fetchall())
    duck.close()
    mode = KrishivMode(executors=2, shuffle_partitions=args.shuffle_partitions,
                       extra_args=("--broadcast-limit", "0"))
    log_path = warehouse / "bench-server-shuffle.log"
    with running_krishiv(mode, warehouse, args.scale, log_name=log_path.name) as port:
        conn = adbc_connect(port)
        cursor = conn.cursor()
        times = []
        for run in range(args.runs + 1):  # the first is a warm-up
            started = time.perf_counter()
            cursor.execute(args.query)
            rows = cursor.fetchall()
            if run:
                times.append(time.perf_counter() - started)
            if as_multiset(rows) != expected:
                raise SystemExit(f"!!! WRONG ANSWER: {rows[:5]!r}, expected {expected[:5]!r}")
        started = time.perf_counter()
        cursor.execute(f"EXPLAIN ANALYZE {args.query}")
        plan_rows = cursor.fetchall()
        analyze_s = time.perf_counter() - started
        cursor.close()
        conn.close()
    plans = {str(kind): str(text) for kind, text in plan_rows}
    plan = plans.get("distributed_plan_with_metrics")
    if plan is None:
        raise SystemExit(f"EXPLAIN ANALYZE gave no distributed plan: {sorted(plans)}")
    stages = _stages(plan)
    if not any(stage.target.startswith("hash(") for stage in stages):
        print(plan)
        raise SystemExit("the query has no hash exchange; nothing was shuffled")
    median = statistics.median(times)
    fetched = sum(stage.fetched_bytes for stage in stages)
    print(f"Shuffle: TPC-H SF {args.scale:g}, Krishiv {mode.describe()}, "
          f"--broadcast-limit 0, ADBC; answer checked against DuckDB; median of {args.runs} "
          f"warm runs; bytes from one EXPLAIN ANALYZE run ({analyze_s:.2f} s)\n\n"
          f"query: {args.query}")
    print()
    print(markdown_table(
        ["stage", "output", "rows written", "MB written (IPC files)",
         "MB fetched from the other executor", "task s"],
        [[s.number, s.target, s.rows, f"{s.bytes / 1e6:.1f}", f"{s.fetched_bytes / 1e6:.1f}",
          f"{s.task_seconds:.2f}"] for s in stages]))
    print()
    print(markdown_table(
        ["query s (median)", "EXPLAIN ANALYZE s", "MB moved between executors",
         "MB/s (EXPLAIN ANALYZE run)", "MB/s (median query)"],
        [[f"{median:.3f}", f"{analyze_s:.3f}", f"{fetched / 1e6:.1f}",
          f"{fetched / 1e6 / analyze_s:.1f}", f"{fetched / 1e6 / median:.1f}"]]))


if __name__ == "__main__":
    main()
