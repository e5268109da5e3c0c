"""Shared fixtures: one demo warehouse and real server processes, always torn down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import pytest

from catalog import IcebergCatalog
from engine.demo import load_tpch_demo
from tests.servers import RunningServer, start_server

TOKEN = "test-token-1"
USERS = "alice:wonderland\nbob:builder\n"


@pytest.fixture(scope="session")
def demo_warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A warehouse with TPC-H SF 0.01 loaded once for the whole run."""
    warehouse = tmp_path_factory.mktemp("warehouse")
    catalog = IcebergCatalog.embedded(str(warehouse))
    load_tpch_demo(catalog, 0.01, scratch=warehouse)
    catalog.create_namespace("public")
    return warehouse


@pytest.fixture(scope="session")
def server(
    demo_warehouse: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """The embedded server over the demo warehouse, with tokens and Basic users.

    Unqualified names resolve in `tpch`, so DuckDB's TPC-H texts run unchanged.
    """
    logs = tmp_path_factory.mktemp("logs")
    users = logs / "users.txt"
    users.write_text(USERS)
    running = start_server(
        demo_warehouse, logs,
        args=["--users-file", str(users), "--demo", "--default-schema", "tpch"],
        env={"KRISHIV_COORDINATOR_BEARER_TOKENS": f"{TOKEN},second-token"},
        token=TOKEN,
    )
    yield running
    running.stop()


def adbc_connect(server: RunningServer, token: str | None = None) -> flightsql.Connection:
    token = token or server.token
    kwargs = {"adbc.flight.sql.authorization_header": f"Bearer {token}"} if token else {}
    return flightsql.connect(server.uri, db_kwargs=kwargs)


@pytest.fixture()
def conn(server: RunningServer) -> Iterator[flightsql.Connection]:
    connection = adbc_connect(server)
    yield connection
    connection.close()


def fetch_rows(conn: flightsql.Connection, query: str) -> list[tuple[object, ...]]:
    """All rows of `query` through an ADBC cursor."""
    with conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchall()
