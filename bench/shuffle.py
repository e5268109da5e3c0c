"""Shuffle throughput between 2 executors of `krishiv serve --executors 2`.

TPC-H demo data at `--scale` in an embedded catalog (`--warehouse` or a temporary
folder); the server runs with 2 local executors, `--broadcast-limit 0` (every equi-join
shuffles both inputs) and `--shuffle-partitions` (4). A shuffle-heavy query (default: the
lineitem-orders join on orderkey grouped by o_orderpriority) is run through ADBC: one
warm-up, then `--runs` timed runs, each answer checked against DuckDB over the same
Parquet files. Then `EXPLAIN ANALYZE` of the query gives, per stage, the rows and bytes
its tasks wrote.

What is counted: Krishiv has no counter of bytes moved between executors. The
coordinator records per task the rows and the size of the shuffle files it wrote (lz4
Arrow IPC files, all output partitions, `_TaskMetrics` via `EXPLAIN ANALYZE`); executors
log, for every input partition fetched from the other executor over Flight DoGet, its
rows (`fetched stage S partition P of map task M from E over Flight: N rows`). So:

- shuffle bytes written = bytes written by the stages that feed a hash exchange;
- bytes over Flight (estimate) = per stage, bytes written x (rows fetched from the other
  executor / rows written): the remote share of that stage's files, as lz4 IPC on disk
  (what went over the wire is the same batches uncompressed, so more).

Both are divided by the median query time (and by the EXPLAIN ANALYZE run's time).

    python -m bench shuffle [--scale 1] [--runs 3] [--shuffle-partitions 4]
                            [--query SQL] [--warehouse DIR]
"""

from __future__ import annotations

import argparse
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
                    r"written, ([\d.]+) s in tasks)?$")
_FETCH = re.compile(r"fetched stage (\d+) partition \d+ of map task \d+ from \S+ over "
                    r"Flight: (\d+) rows")


@dataclass
class Stage:
    number: int
    target: str
    executors: str
    rows: int
    bytes: int
    task_seconds: float
    fetched_rows: int = 0  # rows of its output read by the other executor over Flight

    @property
    def shuffled(self) -> bool:
        return self.target.startswith("hash(")

    @property
    def remote_bytes(self) -> float:
        return self.bytes * self.fetched_rows / self.rows if self.rows else 0.0


def _stages(plan: str, log_lines: list[str]) -> list[Stage]:
    stages = []
    for line in plan.splitlines():
        found = _STAGE.match(line.strip())
        if found:
            number, target, executors, rows, size, seconds = found.groups()
            stages.append(Stage(int(number), target, executors or "", int(rows or 0),
                                int(size or 0), float(seconds or 0)))
    by_number = {stage.number: stage for stage in stages}
    for line in log_lines:
        fetched = _FETCH.search(line)
        if fetched and int(fetched.group(1)) in by_number:
            by_number[int(fetched.group(1))].fetched_rows += int(fetched.group(2))
    return stages


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--shuffle-partitions", type=int, default=4)
    parser.add_argument("--query", default=_QUERY)
    parser.add_argument("--warehouse", type=Path, default=None)
    args = parser.parse_args(argv)
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
        log_start = len(log_path.read_text().splitlines())
        started = time.perf_counter()
        cursor.execute(f"EXPLAIN ANALYZE {args.query}")
        plan_rows = cursor.fetchall()
        analyze_s = time.perf_counter() - started
        time.sleep(0.5)  # executors' log lines are flushed as they go; give them a moment
        log_lines = log_path.read_text().splitlines()[log_start:]
        cursor.close()
        conn.close()
    plans = {str(kind): str(text) for kind, text in plan_rows}
    plan = plans.get("distributed_plan_with_metrics")
    if plan is None:
        raise SystemExit(f"EXPLAIN ANALYZE gave no distributed plan: {sorted(plans)}")
    stages = _stages(plan, log_lines)
    if not any(stage.shuffled for stage in stages):
        print(plan)
        raise SystemExit("the query has no hash exchange; nothing was shuffled")
    median = statistics.median(times)
    written = sum(stage.bytes for stage in stages if stage.shuffled)
    remote = sum(stage.remote_bytes for stage in stages if stage.shuffled)
    print(f"Shuffle: TPC-H SF {args.scale:g}, Krishiv {mode.describe()}, "
          f"--broadcast-limit 0, ADBC; answer checked against DuckDB; median of {args.runs} "
          f"warm runs; bytes from one EXPLAIN ANALYZE run ({analyze_s:.2f} s) and the "
          f"executors' fetch log lines\n\nquery: {args.query}")
    print()
    print(markdown_table(
        ["stage", "output", "rows written", "MB written (lz4 IPC)", "rows fetched remotely",
         "est. MB over Flight", "task s"],
        [[s.number, s.target, s.rows, f"{s.bytes / 1e6:.1f}", s.fetched_rows,
          f"{s.remote_bytes / 1e6:.1f}" if s.shuffled else "", f"{s.task_seconds:.2f}"]
         for s in stages]))
    print()
    print(markdown_table(
        ["query s (median)", "shuffle MB written", "shuffle MB/s (written / query s)",
         "est. MB between executors", "est. MB/s between executors",
         "same, / EXPLAIN ANALYZE s"],
        [[f"{median:.3f}", f"{written / 1e6:.1f}", f"{written / 1e6 / median:.1f}",
          f"{remote / 1e6:.1f}", f"{remote / 1e6 / median:.1f}",
          f"{remote / 1e6 / analyze_s:.1f}"]]))


if __name__ == "__main__":
    main()
