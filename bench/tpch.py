"""TPC-H side by side in one run: Krishiv embedded and single-node (ADBC), DataFusion
in-process, DuckDB in-process, and Ballista where it can be installed.

Every engine reads the same Parquet files, made by tpchgen-cli and committed as the
Iceberg tables Krishiv serves. Krishiv runs as real processes: `krishiv serve` (embedded)
and `krishiv serve --executors N` (single-node cluster: stages and Flight shuffles), or
with `--separate` a coordinator and N executors started one by one. DataFusion gets the
same target partitions as Krishiv (the machine's cores). Every Krishiv answer is checked
against DuckDB's: the same rows, in the order of the query's ORDER BY keys. Warm runs;
per engine and query the median of `--runs`, the engines taking turns run by run.

    python -m bench tpch --scale 1 [--runs 3] [--queries 1-22] [--warehouse DIR]
                         [--executors 2] [--separate] [--no-cluster]
                         [--json FILE] [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import datafusion
import duckdb
import pyarrow as pa

from bench.servers import KrishivMode, running_krishiv
from catalog import IcebergCatalog, TableIdent
from engine.demo import DEMO_NAMESPACE, TPCH_TABLES, load_tpch_demo
from tests.reference import duckdb_over_catalog, matches, tpch_queries

# Why there is no Ballista column on these machines (checked with pip, 2026-11-29).
BALLISTA_UNAVAILABLE = (
    "PyPI `ballista` 54.1.0 is a source distribution only; building it runs cargo, which "
    "must fetch DataFusion and Ballista crates from crates.io, a registry these machines "
    "cannot reach (pip fails: 'Could not resolve host: index.crates.io')")

Runner = Callable[[str], object]


def _interleaved_medians(runners: dict[str, Runner], text: str, runs: int
                         ) -> dict[str, tuple[float, object]]:
    """Per engine: the median seconds of `runs` timed runs of `text`, and its answer.

    After one warm-up run each, the engines take turns run by run, so a slow spell of
    the machine (they last seconds here) falls on all of them alike."""
    answers = {column: run(text) for column, run in runners.items()}
    times: dict[str, list[float]] = {column: [] for column in runners}
    for _ in range(runs):
        for column, run in runners.items():
            started = time.perf_counter()
            answers[column] = run(text)
            times[column].append(time.perf_counter() - started)
    return {column: (statistics.median(times[column]), answers[column]) for column in runners}


def _datafusion(catalog: IcebergCatalog, partitions: int, links: Path
                ) -> datafusion.SessionContext:
    """DataFusion over each table's snapshot files, as one listing table (a folder of
    links to exactly those files), with the same target partitions as Krishiv."""
    config = (datafusion.SessionConfig()
              .set("datafusion.execution.parquet.schema_force_view_types", "false")
              .with_target_partitions(partitions))
    ctx = datafusion.SessionContext(config)
    for name in TPCH_TABLES:
        folder = links / name
        folder.mkdir(parents=True, exist_ok=True)
        for number, path in enumerate(catalog.scan(TableIdent(DEMO_NAMESPACE, name)).data_files):
            link = folder / f"{number:05d}.parquet"
            link.unlink(missing_ok=True)
            link.symlink_to(path.removeprefix("file://"))
        ctx.register_listing_table(name, str(folder), file_extension=".parquet")
    return ctx


def _ballista() -> tuple[Runner | None, str]:
    try:
        import ballista  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return None, BALLISTA_UNAVAILABLE
    return None, "ballista imports here, but this harness has no Ballista runner yet"


@contextmanager
def _krishiv_client(port: int) -> Iterator[Runner]:
    warnings.filterwarnings("ignore", message="Cannot disable autocommit")
    conn = flightsql.connect(f"grpc://127.0.0.1:{port}")
    cursor = conn.cursor()

    def run(text: str) -> object:
        cursor.execute(text)
        return cursor.fetch_arrow_table()

    try:
        yield run
    finally:
        cursor.close()
        conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--queries", default="1-22")
    parser.add_argument("--warehouse", type=Path, default=None)
    parser.add_argument("--executors", type=int, default=2)
    parser.add_argument("--shuffle-partitions", type=int, default=None,
                        help="the cluster's --shuffle-partitions (default: the server's)")
    parser.add_argument("--separate", action="store_true",
                        help="start `krishiv coordinator` and `krishiv executor` processes "
                             "instead of `krishiv serve --executors N`")
    parser.add_argument("--no-cluster", action="store_true",
                        help="leave out the single-node cluster column")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--plot", type=Path, default=None,
                        help="PNG of per-query ratios to DataFusion")
    args = parser.parse_args(argv)
    numbers = _parse_queries(args.queries)
    partitions = os.cpu_count() or 1
    _, ballista_note = _ballista()
    modes = {"embedded": KrishivMode()}
    if not args.no_cluster:
        modes["single-node"] = KrishivMode(args.executors, args.separate,
                                           args.shuffle_partitions)
    with ExitStack() as stack:
        # Without --warehouse the generated data goes when the run ends.
        warehouse = args.warehouse or Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="krishiv-bench-")))
        catalog = IcebergCatalog.embedded(str(warehouse))
        load_tpch_demo(catalog, args.scale, scratch=warehouse)
        duck = duckdb_over_catalog(catalog)
        texts = tpch_queries(duck)
        links = stack.enter_context(tempfile.TemporaryDirectory(prefix="krishiv-df-"))
        ctx = _datafusion(catalog, partitions, Path(links))
        runners: dict[str, Runner] = {}
        for column, mode in modes.items():
            port = stack.enter_context(
                running_krishiv(mode, warehouse, args.scale, f"bench-{column}.log"))
            runners[column] = stack.enter_context(_krishiv_client(port))
        runners["datafusion"] = lambda t: ctx.sql(t).collect()
        runners["duckdb"] = lambda t: duck.execute(t).fetch_arrow_table()
        results = _run_all(runners, texts, numbers, args.runs, list(modes), duck)
        duck_version = duck.execute("SELECT version()").fetchone()[0]  # type: ignore[index]
    report = {
        "scale": args.scale, "runs": args.runs, "target_partitions": partitions,
        "modes": {column: mode.describe() for column, mode in modes.items()},
        "versions": {"datafusion": datafusion.__version__, "duckdb": duck_version},
        "ballista": ballista_note, "queries": results,
        "date": time.strftime("%Y-%m-%d"),
    }
    _print_markdown(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.plot:
        plot_ratios(report, args.plot)
    wrong = [n for n, row in results.items() if not all(row["correct"].values())]  # type: ignore[attr-defined]
    if wrong:
        raise SystemExit(f"Krishiv's answers differ from DuckDB's for queries {wrong}")


def _run_all(runners: dict[str, Runner], texts: dict[int, str], numbers: list[int],
             runs: int, checked: list[str], duck: duckdb.DuckDBPyConnection
             ) -> dict[str, dict[str, object]]:
    """Per query: each engine's median seconds, and whether each Krishiv answer matched
    DuckDB's. Every engine's timed runs end with Arrow data (no Python rows); answers are
    compared afterwards, untimed."""
    results: dict[str, dict[str, object]] = {}
    for number in numbers:
        text = texts[number]
        row: dict[str, object] = {}
        answers: dict[str, object] = {}
        for column, (seconds, answer) in _interleaved_medians(runners, text, runs).items():
            row[column], answers[column] = seconds, answer
        row["correct"] = {c: matches(_rows(answers[c]), duck, text)  # type: ignore[arg-type]
                          for c in checked}
        results[str(number)] = row
        print(f"q{number}: " + ", ".join(f"{c} {row[c]:.3f}s" for c in runners)  # type: ignore[str-format]
              + ("" if all(row["correct"].values()) else "  WRONG ANSWER"),  # type: ignore[attr-defined]
              flush=True)
    return results


def _rows(table: pa.Table) -> list[tuple[object, ...]]:
    return list(zip(*(column.to_pylist() for column in table.columns), strict=True))


def engine_columns(report: dict) -> list[str]:  # type: ignore[type-arg]
    return [c for c in ("embedded", "single-node") if c in report["modes"]]


def geomean_ratio(report: dict, column: str, base: str) -> float:  # type: ignore[type-arg]
    rows = report["queries"].values()
    return _geomean([row[column] / row[base] for row in rows])


def _print_markdown(report: dict) -> None:  # type: ignore[type-arg]
    ours = engine_columns(report)
    print(f"\nTPC-H SF {report['scale']:g}, median of {report['runs']} warm runs, seconds; "
          f"{report['target_partitions']} target partitions; {report['date']}")
    for column in ours:
        print(f"- {column}: {report['modes'][column]}")
    print(f"- Ballista: not run. {report['ballista']}\n")
    header = ours + ["datafusion", "duckdb"] + [f"{c}/df" for c in ours] + ["duckdb/df"]
    if "single-node" in ours:
        header.append("single/embedded")
    print("| query | " + " | ".join(header) + " | answers |")
    print("|" + " --- |" * (len(header) + 2))
    for number, row in report["queries"].items():
        cells = [f"{row[c]:.3f}" for c in [*ours, "datafusion", "duckdb"]]
        cells += [f"{row[c] / row['datafusion']:.2f}" for c in [*ours, "duckdb"]]
        if "single-node" in ours:
            cells.append(f"{row['single-node'] / row['embedded']:.2f}")
        answers = "ok" if all(row["correct"].values()) else "WRONG"
        print(f"| {number} | " + " | ".join(cells) + f" | {answers} |")
    summary = [f"{c}/datafusion {geomean_ratio(report, c, 'datafusion'):.2f}"
               for c in [*ours, "duckdb"]]
    if "single-node" in ours:
        summary.append(f"single-node/embedded "
                       f"{geomean_ratio(report, 'single-node', 'embedded'):.2f}")
    print("\nGeometric means: " + ", ".join(summary))


def plot_ratios(report: dict, path: Path) -> None:  # type: ignore[type-arg]
    """Bars per query: each engine's time over DataFusion's (log scale, 1.0 = parity)."""
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [*engine_columns(report), "duckdb"]
    numbers = list(report["queries"])
    width = 0.8 / len(columns)
    figure, axes = plt.subplots(figsize=(12, 4.5))
    for index, column in enumerate(columns):
        ratios = [report["queries"][n][column] / report["queries"][n]["datafusion"]
                  for n in numbers]
        label = f"{column} (geomean {geomean_ratio(report, column, 'datafusion'):.2f})"
        axes.bar([i + (index - (len(columns) - 1) / 2) * width for i in range(len(numbers))],
                 ratios, width, label=label)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_yscale("log")
    axes.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
    axes.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%.1f"))
    axes.set_xticks(range(len(numbers)), [f"q{n}" for n in numbers])
    axes.set_ylabel("time / DataFusion in-process")
    axes.set_title(f"TPC-H SF {report['scale']:g}: per-query time relative to DataFusion "
                   f"({report['date']}, median of {report['runs']})")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


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
