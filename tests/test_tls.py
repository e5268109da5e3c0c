"""TLS and mutual TLS on the Flight SQL endpoint, with the real ADBC driver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import pytest

from tests.certs import Certs, make_certs
from tests.servers import RunningServer, running_server, start_server

ROOTS = "adbc.flight.sql.client_option.tls_root_certs"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def tls_server(demo_warehouse: Path, certs: Certs, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[RunningServer]:
    args = ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)]
    with running_server(demo_warehouse, tmp_path_factory.mktemp("tls"), args) as server:
        yield server


@pytest.fixture(scope="module")
def mtls_server(demo_warehouse: Path, certs: Certs, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[RunningServer]:
    args = ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
            "--tls-client-ca", str(certs.ca)]
    with running_server(demo_warehouse, tmp_path_factory.mktemp("mtls"), args) as server:
        yield server


def _count(uri: str, **db_kwargs: str) -> int:
    with flightsql.connect(uri, db_kwargs=db_kwargs) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM tpch.region")
        return int(cur.fetchone()[0])


def test_tls_with_trusted_root(tls_server: RunningServer, certs: Certs) -> None:
    assert "serving Flight SQL on grpc+tls://" in tls_server.log()
    uri = f"grpc+tls://127.0.0.1:{tls_server.port}"
    assert _count(uri, **{ROOTS: certs.ca.read_text()}) == 5


def test_tls_refuses_plaintext_and_untrusted(tls_server: RunningServer) -> None:
    with pytest.raises(adbc_driver_manager.Error):
        _count(f"grpc://127.0.0.1:{tls_server.port}")
    with pytest.raises(adbc_driver_manager.Error):
        _count(f"grpc+tls://127.0.0.1:{tls_server.port}")  # system roots do not know our CA


def test_mutual_tls(mtls_server: RunningServer, certs: Certs) -> None:
    uri = f"grpc+tls://127.0.0.1:{mtls_server.port}"
    roots = {ROOTS: certs.ca.read_text()}
    assert _count(uri, **roots,
                  **{"adbc.flight.sql.client_option.mtls_cert_chain": certs.client_cert.read_text(),
                     "adbc.flight.sql.client_option.mtls_private_key":
                         certs.client_key.read_text()}) == 5
    with pytest.raises(adbc_driver_manager.Error):
        _count(uri, **roots)  # no client certificate


def test_tls_flags_must_come_together(tmp_path: Path, certs: Certs) -> None:
    with pytest.raises(RuntimeError, match="--tls-cert and --tls-key go together"):
        start_server(tmp_path / "wh", tmp_path, args=["--tls-cert", str(certs.server_cert)])
