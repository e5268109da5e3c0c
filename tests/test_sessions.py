"""Session options (catalog, schema, dialect) by cookie or token, and SQL dialects."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import grpc
import pytest

from flight_server.generated import Flight_pb2 as fpb
from tests.conftest import fetch_rows
from tests.servers import RunningServer, running_server

TOKEN = "session-token"
USERS = "carol:secret\n"
SERVICE = "/arrow.flight.protocol.FlightService"


@pytest.fixture(scope="module")
def session_server(demo_warehouse: Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("sessions")
    users = root / "users"
    users.write_text(USERS)
    with running_server(demo_warehouse, root, ["--users-file", str(users)], TOKEN) as server:
        yield server


def _connect(server: RunningServer, cookies: bool = False, **conn_kwargs: str
             ) -> flightsql.Connection:
    db_kwargs = {"username": "carol", "password": "secret"}  # a fresh token per login
    if cookies:
        db_kwargs["adbc.flight.sql.rpc.with_cookie_middleware"] = "true"
    return flightsql.connect(server.uri, db_kwargs=db_kwargs, conn_kwargs=conn_kwargs or None)


def _set(conn: flightsql.Connection, **options: str) -> None:
    conn.adbc_connection.set_options(
        **{f"adbc.flight.sql.session.option.{k}": v for k, v in options.items()})


def _options(conn: flightsql.Connection) -> dict[str, str]:
    return json.loads(conn.adbc_connection.get_option("adbc.flight.sql.session.options"))


def test_schema_option_by_token(session_server: RunningServer) -> None:
    with _connect(session_server) as conn:
        assert _options(conn) == {"catalog": "krishiv", "schema": "public",
                                  "dialect": "datafusion"}
        _set(conn, schema="tpch")
        assert _options(conn)["schema"] == "tpch"
        assert fetch_rows(conn, "SELECT count(*) FROM nation") == [(25,)]
    with _connect(session_server) as other:  # another login: its own session
        with pytest.raises(adbc_driver_manager.Error) as err:
            fetch_rows(other, "SELECT count(*) FROM nation")
        assert err.value.status_code == adbc_driver_manager.AdbcStatusCode.NOT_FOUND


def test_catalog_option_as_the_jdbc_url_sets_it(session_server: RunningServer) -> None:
    with _connect(session_server) as conn:
        _set(conn, catalog="krishiv")
        assert _options(conn)["catalog"] == "krishiv"
        with pytest.raises(adbc_driver_manager.Error):
            _set(conn, catalog="not_krishiv")


def test_dialect_option_by_cookie(session_server: RunningServer) -> None:
    with _connect(session_server, cookies=True) as conn:
        _set(conn, dialect="tsql", schema="tpch")
        assert fetch_rows(conn, "SELECT TOP 2 n_name FROM nation ORDER BY n_nationkey") == [
            ("ALGERIA",), ("ARGENTINA",)]
        with pytest.raises(adbc_driver_manager.Error) as err:
            fetch_rows(conn, "SELECT FROM WHERE")
        assert err.value.status_code == adbc_driver_manager.AdbcStatusCode.INVALID_ARGUMENT
        assert "tsql SQL error at line 1, column" in str(err.value)
        _set(conn, dialect="datafusion")
        assert fetch_rows(conn, "SELECT n_name FROM nation ORDER BY n_nationkey LIMIT 1") == [
            ("ALGERIA",)]


@pytest.mark.parametrize(
    ("dialect", "query"),
    [
        ("mysql", "SELECT `n_name` FROM tpch.nation ORDER BY n_nationkey LIMIT 1, 2"),
        ("postgres", "SELECT n_name::text FROM tpch.nation ORDER BY n_nationkey OFFSET 1 LIMIT 2"),
        ("snowflake", "SELECT IFF(n_nationkey > 0, n_name, 'x') FROM tpch.nation "
                      "WHERE n_nationkey IN (1, 2) ORDER BY n_nationkey"),
        ("duckdb", "SELECT n_name FROM tpch.nation ORDER BY n_nationkey LIMIT 2 OFFSET 1"),
        ("trino", "SELECT n_name FROM tpch.nation ORDER BY n_nationkey OFFSET 1 LIMIT 2"),
        ("spark", "SELECT `n_name` FROM tpch.nation WHERE n_nationkey BETWEEN 1 AND 2 "
                  "ORDER BY n_nationkey"),
        ("bigquery", "SELECT n_name FROM tpch.nation WHERE n_nationkey IN UNNEST([1, 2]) "
                     "ORDER BY n_nationkey"),
        ("tsql", "SELECT TOP 2 n_name FROM tpch.nation WHERE n_nationkey >= 1 "
                 "ORDER BY n_nationkey"),
    ],
)
def test_dialect_header(session_server: RunningServer, dialect: str, query: str) -> None:
    with _connect(session_server, **{"adbc.flight.sql.rpc.call_header.dialect": dialect}) as c:
        assert fetch_rows(c, query) == [("ARGENTINA",), ("BRAZIL",)]


def test_bad_options_are_reported(session_server: RunningServer) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{session_server.port}")
    do_action = channel.unary_stream(f"{SERVICE}/DoAction",
                                     request_serializer=fpb.Action.SerializeToString,
                                     response_deserializer=fpb.Result.FromString)
    request = fpb.SetSessionOptionsRequest()
    request.session_options["schema"].string_value = "no_such_namespace"
    request.session_options["dialect"].string_value = "klingon"
    request.session_options["catalog"].string_value = "other"
    request.session_options["colour"].string_value = "blue"
    request.session_options["dialect2"].bool_value = True
    metadata = [("authorization", f"Bearer {TOKEN}-unused")]
    with pytest.raises(grpc.RpcError) as err:
        list(do_action(fpb.Action(type="SetSessionOptions", body=request.SerializeToString()),
                       metadata=metadata))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    responses = do_action(fpb.Action(type="SetSessionOptions", body=request.SerializeToString()),
                          metadata=[("authorization", "Basic " + "Y2Fyb2w6c2VjcmV0")])
    (body,) = [r.body for r in responses]
    result = fpb.SetSessionOptionsResult.FromString(body)
    errors = {name: e.value for name, e in result.errors.items()}
    invalid = fpb.SetSessionOptionsResult.INVALID_VALUE
    assert errors == {"schema": invalid, "dialect": invalid, "catalog": invalid,
                      "colour": fpb.SetSessionOptionsResult.INVALID_NAME, "dialect2":
                      fpb.SetSessionOptionsResult.INVALID_NAME}
    headers = dict(responses.initial_metadata())
    assert headers["set-cookie"].startswith("arrow_flight_session_id=")
    channel.close()


class _RawSession:
    """DoAction over grpcio, logged in once as carol, with chosen cookies."""

    def __init__(self, server: RunningServer) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
        self._do_action = self.channel.unary_stream(
            f"{SERVICE}/DoAction", request_serializer=fpb.Action.SerializeToString,
            response_deserializer=fpb.Result.FromString)
        _, headers = self._call([("authorization", "Basic Y2Fyb2w6c2VjcmV0")],
                                "GetSessionOptions", b"")
        self.auth = [("authorization", headers["authorization"])]  # carol's bearer token

    def _call(self, metadata: list[tuple[str, str]], kind: str, body: bytes
              ) -> tuple[bytes, dict[str, str]]:
        responses = self._do_action(fpb.Action(type=kind, body=body), metadata=metadata)
        bodies = [r.body for r in responses]
        return (bodies[0] if bodies else b""), dict(responses.initial_metadata())

    def act(self, kind: str, body: bytes, cookie: str = "") -> tuple[bytes, dict[str, str]]:
        return self._call(self.auth + ([("cookie", cookie)] if cookie else []), kind, body)

    def schema(self, cookie: str) -> str:
        body, _ = self.act("GetSessionOptions", b"", cookie)
        return fpb.GetSessionOptionsResult.FromString(body).session_options["schema"].string_value

    def set_schema(self, schema: str, cookie: str = "") -> str:
        request = fpb.SetSessionOptionsRequest()
        request.session_options["schema"].string_value = schema
        _, headers = self.act("SetSessionOptions", request.SerializeToString(), cookie)
        return headers["set-cookie"].split(";")[0]


def test_close_session_forgets_options(session_server: RunningServer) -> None:
    raw = _RawSession(session_server)
    cookie = raw.set_schema("tpch")
    assert raw.schema(cookie) == "tpch"
    body, _ = raw.act("CloseSession", b"", cookie)
    assert fpb.CloseSessionResult.FromString(body).status == fpb.CloseSessionResult.CLOSED
    assert raw.schema(cookie) == "public"
    raw.channel.close()


def test_sessions_cannot_be_fixed_or_borrowed(session_server: RunningServer) -> None:
    victim, attacker = _RawSession(session_server), _RawSession(session_server)
    chosen = "arrow_flight_session_id=chosen-by-attacker"
    real = victim.set_schema("tpch", chosen)
    assert real != chosen  # the server names sessions itself
    assert victim.schema(real) == "tpch"
    assert attacker.schema(chosen) == "public"
    assert attacker.schema(real) == "public"  # another login cannot use the cookie
    victim.channel.close()
    attacker.channel.close()
