"""Bearer tokens, token files with reload, Basic users; negatives first."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import adbc_driver_manager
import pyarrow.flight as flight
import pytest

from flight_server.generated import FlightSql_pb2 as sql
from tests.conftest import adbc_connect
from tests.flight_raw import basic_header, bearer, fetch
from tests.servers import KRISHIV, RunningServer, environment_without_krishiv, start_server

QUERY = sql.CommandStatementQuery(query="SELECT 1 AS one")


def _raw(server: RunningServer, options: flight.FlightCallOptions) -> None:
    client = flight.connect(server.uri)
    try:
        fetch(client, QUERY, options)
    finally:
        client.close()


def test_no_token_is_unauthenticated(server: RunningServer) -> None:
    with pytest.raises(flight.FlightUnauthenticatedError) as err:
        _raw(server, flight.FlightCallOptions())
    assert "missing credentials" in str(err.value)
    assert "Traceback" not in str(err.value)


def test_wrong_token_is_unauthenticated(server: RunningServer) -> None:
    with pytest.raises(flight.FlightUnauthenticatedError, match="invalid bearer token"):
        _raw(server, bearer("not-the-token"))


def test_wrong_password_is_unauthenticated(server: RunningServer) -> None:
    options = flight.FlightCallOptions(headers=[(b"authorization",
                                                 basic_header("alice", "wrong"))])
    with pytest.raises(flight.FlightUnauthenticatedError, match="invalid username or password"):
        _raw(server, options)


def test_adbc_wrong_token_reports_unauthenticated(server: RunningServer) -> None:
    with pytest.raises(adbc_driver_manager.Error) as err:
        conn = adbc_connect(server, "bogus")
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    assert err.value.status_code == adbc_driver_manager.AdbcStatusCode.UNAUTHENTICATED


def test_token_file_reload_adds_and_removes(tmp_path: Path, demo_warehouse: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("old-token\n")
    running = start_server(
        demo_warehouse, tmp_path,
        env={"KRISHIV_COORDINATOR_BEARER_TOKEN_FILE": str(token_file),
             "KRISHIV_COORDINATOR_AUTH_RELOAD_INTERVAL_SECS": "0.5"},
    )
    try:
        _raw(running, bearer("old-token"))
        token_file.write_text("# rotated\nold-token\nnew-token\n")
        _wait_for(lambda: _accepted(running, "new-token"))
        token_file.write_text("new-token\n")
        _wait_for(lambda: not _accepted(running, "old-token"))
        # A garbled or empty file keeps the last good set: nobody is locked out or let in.
        token_file.write_bytes(b"\xff\xfe garbage")
        time.sleep(1.5)
        assert _accepted(running, "new-token")
        token_file.write_text("")
        time.sleep(1.5)
        assert _accepted(running, "new-token")
        assert not _accepted(running, "")
        assert "keeping previous tokens" in running.log()
    finally:
        running.stop()


def _accepted(server: RunningServer, token: str) -> bool:
    try:
        _raw(server, bearer(token))
        return True
    except flight.FlightUnauthenticatedError:
        return False


def _wait_for(condition: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_refuses_non_loopback_without_tokens(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"refusing to listen on 0\.0\.0\.0 without bearer"):
        start_server(tmp_path / "wh", tmp_path, args=["--host", "0.0.0.0"],
                     ready_timeout_s=60)


def test_port_in_use_is_a_one_line_error(tmp_path: Path, demo_warehouse: Path) -> None:
    running = start_server(demo_warehouse, tmp_path)
    try:
        done = subprocess.run(
            [KRISHIV, "serve", "--warehouse", str(tmp_path / "other"), "--port",
             str(running.port)], capture_output=True, text=True, timeout=120,
            env=environment_without_krishiv())
        assert done.returncode != 0
        assert f"cannot listen on 127.0.0.1:{running.port}: the port is in use" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        running.stop()


def test_loopback_without_tokens_serves_and_warns(tmp_path: Path, demo_warehouse: Path) -> None:
    running = start_server(demo_warehouse, tmp_path)
    try:
        _raw(running, flight.FlightCallOptions())
        assert "serving without authentication (loopback only)" in running.log()
    finally:
        running.stop()


def test_insecure_allows_non_loopback_without_tokens(tmp_path: Path, demo_warehouse: Path
                                                     ) -> None:
    running = start_server(demo_warehouse, tmp_path, args=["--host", "0.0.0.0", "--insecure"])
    try:
        _raw(running, flight.FlightCallOptions())  # reached on 127.0.0.1
        assert "serving without authentication (INSECURE, no auth)" in running.log()
    finally:
        running.stop()
