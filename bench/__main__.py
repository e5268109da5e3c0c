"""`python -m bench NAME [ARGS]`: run one benchmark, or `all` of them in turn."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "tpch": "TPC-H: Krishiv embedded and single-node vs DataFusion, DuckDB (and Ballista)",
    "streaming": "a 10M-row result through ADBC vs a bare pyarrow Flight server",
    "latency": "SELECT 1 round trips through ADBC DB-API, p50/p99",
    "concurrency": "1/4/16/64 ADBC client processes on a mixed query set",
    "ingest": "adbc_ingest of lineitem vs pyiceberg append",
    "shuffle": "bytes/s moved between 2 executors",
    "transport": "DoGet throughput of the grpcio transport vs pyarrow's Flight server",
}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in BENCHMARKS:
        lines = [f"  {name:12s} {what}" for name, what in BENCHMARKS.items()]
        raise SystemExit("usage: python -m bench NAME [ARGS]  (NAME --help for its options)\n"
                         + "\n".join(lines))
    module = importlib.import_module(f"bench.{argv[0]}")
    module.main(argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
