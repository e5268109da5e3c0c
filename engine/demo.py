"""TPC-H demo data, generated locally with tpchgen-cli and stored as catalog tables."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from catalog import Catalog, TableIdent
from engine.arrow_types import plain_schema

log = logging.getLogger("krishiv.demo")

TPCH_TABLES = ("nation", "region", "part", "supplier", "partsupp", "customer", "orders",
               "lineitem")
DEMO_NAMESPACE = "tpch"
_SCALE_PROPERTY = "krishiv.demo-scale"
_ROWS_PER_FILE = 1_000_000


class DemoDataError(Exception):
    pass


def tpchgen_executable() -> str:
    beside_python = Path(sys.executable).parent / "tpchgen-cli"
    found = str(beside_python) if beside_python.exists() else shutil.which("tpchgen-cli")
    if not found:
        raise DemoDataError("tpchgen-cli is not installed (pip install tpchgen-cli)")
    return found


def generate_tpch(scale: float, out_dir: Path) -> dict[str, Path]:
    """TPC-H tables at `scale` as one Parquet file each, under `out_dir`."""
    command = [tpchgen_executable(), "parquet", "-s", f"{scale:g}", f"--output-dir={out_dir}"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DemoDataError(f"tpchgen-cli failed: {done.stderr.strip()[:300]}")
    return {name: out_dir / f"{name}.parquet" for name in TPCH_TABLES}


def demo_loaded(catalog: Catalog, scale: float) -> bool:
    if not catalog.namespace_exists(DEMO_NAMESPACE):
        return False
    properties = catalog.namespace_properties(DEMO_NAMESPACE)
    tables = set(catalog.list_tables(DEMO_NAMESPACE))
    return properties.get(_SCALE_PROPERTY) == f"{scale:g}" and tables >= set(TPCH_TABLES)


def load_tpch_demo(catalog: Catalog, scale: float, scratch: Path | None = None) -> bool:
    """Create namespace `tpch` with the eight TPC-H tables; False if already there."""
    if demo_loaded(catalog, scale):
        return False
    if catalog.namespace_exists(DEMO_NAMESPACE):
        for name in catalog.list_tables(DEMO_NAMESPACE):
            catalog.drop_table(TableIdent(DEMO_NAMESPACE, name))
        catalog.drop_namespace(DEMO_NAMESPACE)
    log.info("generating TPC-H scale %g demo data", scale)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        files = generate_tpch(scale, Path(tmp))
        catalog.create_namespace(DEMO_NAMESPACE, {_SCALE_PROPERTY: f"{scale:g}"})
        for name, path in files.items():
            rows = pq.read_table(path)
            rows = rows.cast(plain_schema(rows.schema))
            ident = TableIdent(DEMO_NAMESPACE, name)
            # Big tables get a data file per million rows: file splits are what a
            # cluster's scans are parallel over.
            chunks = [rows.slice(start, _ROWS_PER_FILE)
                      for start in range(0, max(rows.num_rows, 1), _ROWS_PER_FILE)]
            catalog.create_table_with(ident, chunks[0])
            for chunk in chunks[1:]:
                catalog.append(ident, chunk)
            log.info("loaded %s: %d rows in %d file(s)", ident, rows.num_rows, len(chunks))
    return True
