"""`python -m bench NAME [ARGS]`: run one benchmark, or `all` of them in turn.

`python -m bench all [--scale 1] [--warehouse DIR] [--out DIR]` runs every benchmark with
its defaults at the given TPC-H scale (TPC-H, ingest and shuffle), over one warehouse, and
writes the TPC-H figures and plot to DIR (default bench/) next to the printed tables.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from flight_server.launch import keep_freed_memory

# The Krishiv servers run with this allocator setting (flight_server/launch.py); the
# engines run in this process (DataFusion, the bare pyarrow servers) get it too, so that
# ratios compare the servers, not the settings. Read when Arrow and DataFusion load.
keep_freed_memory()

BENCHMARKS = {
    "tpch": "TPC-H: Krishiv embedded and single-node vs DataFusion, DuckDB (and Ballista)",
    "streaming": "a 10M-row result through ADBC vs a bare pyarrow Flight server",
    "latency": "SELECT 1 round trips through ADBC DB-API, p50/p99",
    "concurrency": "1/4/16/64 ADBC client processes on a mixed query set",
    "ingest": "adbc_ingest of lineitem vs pyiceberg append",
    "shuffle": "bytes/s moved between 2 executors",
    "transport": "DoGet throughput of the grpcio transport vs pyarrow's Flight server",
}


# Installed by the dev extras, not by the product: a missing one gets a hint, not a traceback.
TEST_TOOLS = {"adbc_driver_flightsql", "adbc_driver_manager", "duckdb", "matplotlib"}


def run_all(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench all")
    parser.add_argument("--scale", default="1")
    parser.add_argument("--warehouse", type=Path, default=Path("/tmp/krishiv-bench-sf1"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args(argv)
    warehouse = ["--warehouse", str(args.warehouse)]
    runs: list[list[str]] = [
        ["tpch", "--scale", args.scale, *warehouse, "--json", str(args.out / "tpch.json"),
         "--plot", str(args.out / "tpch-ratios.png")],
        ["streaming"], ["latency"], ["concurrency"],
        ["ingest", "--scale", args.scale],
        ["shuffle", "--scale", args.scale, *warehouse],
    ]
    for run in runs:
        print(f"\n## python -m bench {' '.join(run)}\n", flush=True)
        importlib.import_module(f"bench.{run[0]}").main(run[1:])


def main(argv: list[str]) -> None:
    if argv[:1] == ["all"]:
        run_all(argv[1:])
        return
    if not argv or argv[0] not in BENCHMARKS:
        lines = [f"  {name:12s} {what}" for name, what in BENCHMARKS.items()]
        lines.append(f"  {'all':12s} every one of these in turn")
        raise SystemExit("usage: python -m bench NAME [ARGS]  (NAME --help for its options)\n"
                         + "\n".join(lines))
    module = importlib.import_module(f"bench.{argv[0]}")
    module.main(argv[1:])


def run(argv: list[str]) -> None:
    try:
        main(argv)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in TEST_TOOLS:
            raise
        raise SystemExit(f"the benchmarks need the test tools, and {exc.name} is not "
                         "installed: run `make venv`, or `pip install '.[dev]'` in the "
                         "checkout") from None


if __name__ == "__main__":
    run(sys.argv[1:])
