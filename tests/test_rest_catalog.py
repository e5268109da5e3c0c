"""`krishiv serve --catalog-uri` reads Iceberg tables through a REST catalog."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pyiceberg.catalog import load_catalog

from tests.conftest import adbc_connect
from tests.rest_catalog import RestCatalogServer
from tests.servers import KRISHIV, start_server


def test_serve_over_rest_catalog(demo_warehouse: Path, tmp_path: Path) -> None:
    backend = load_catalog(
        "krishiv", type="sql",  # SqlCatalog scopes namespaces by catalog name
        uri=f"sqlite:///{demo_warehouse / 'catalog.db'}", warehouse=f"file://{demo_warehouse}",
    )
    with RestCatalogServer(backend) as rest:
        running = start_server(tmp_path / "unused", tmp_path, args=["--catalog-uri", rest.uri])
        try:
            with adbc_connect(running) as conn, conn.cursor() as cur:
                cur.execute("SELECT r_name FROM tpch.region ORDER BY r_regionkey")
                assert [r[0] for r in cur.fetchall()] == [
                    "AFRICA", "AMERICA", "ASIA", "EUROPE", "MIDDLE EAST"]
                tables = conn.adbc_get_objects(depth="tables", db_schema_filter="tpch")
                listed = tables.read_all().to_pylist()[0]["catalog_db_schemas"][0]
                assert len(listed["db_schema_tables"]) == 8
        finally:
            running.stop()


def test_unreachable_catalog_fails_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [KRISHIV, "serve", "--port", "0", "--catalog-uri", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode != 0
    assert "cannot use the catalog at http://127.0.0.1:9" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
