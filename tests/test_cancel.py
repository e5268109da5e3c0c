"""Cancelling running queries (gRPC cancel, ADBC adbc_cancel, CancelFlightInfo) and the
bounded query queue.

A cancel ends the call at once with CANCELLED, frees the query's slot and stops its
work: the server's processes use no CPU for it a second later.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import adbc_driver_manager
import grpc
import pyarrow.flight as flight
import pytest

from flight_server.generated import Flight_pb2 as fpb
from flight_server.generated import FlightSql_pb2 as sql
from flight_server.protocol import pack
from tests.conftest import adbc_connect
from tests.cpu import assert_cpu_freed, wait_busy
from tests.flight_raw import bearer, grpc_status_of_query
from tests.servers import RunningServer, running_server

TOKEN = "cancel-token"
# Minutes of work (18e9 joined rows): it only ends soon if the cancel stops it.
SLOW = ("SELECT count(*) FROM tpch.lineitem a, tpch.lineitem b, tpch.region c "
        "WHERE a.l_orderkey + b.l_orderkey > c.r_regionkey")


@pytest.fixture(scope="module")
def one_slot(demo_warehouse: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[RunningServer]:
    """One query runs at a time, one may wait; a 30 s timeout guards against hangs."""
    args = ["--max-concurrent-queries", "1", "--max-queued-queries", "1", "--query-timeout", "30"]
    with running_server(demo_warehouse, tmp_path_factory.mktemp("cancel"), args, TOKEN) as server:
        yield server


def _drain(port: int, ticket: bytes) -> int:
    """DoGet with grpcio (pyarrow's reader turns a server CANCELLED into KeyboardInterrupt)."""
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        do_get = channel.unary_stream("/arrow.flight.protocol.FlightService/DoGet",
                                      request_serializer=fpb.Ticket.SerializeToString,
                                      response_deserializer=fpb.FlightData.FromString)
        stream = do_get(fpb.Ticket(ticket=ticket), metadata=[("authorization",
                                                              f"Bearer {TOKEN}")])
        return sum(1 for _ in stream)
    finally:
        channel.close()


class _Background:
    """Runs `target` in a thread and keeps the exception it ended with."""

    def __init__(self, target: object) -> None:
        self.error: BaseException | None = None
        self.done = threading.Event()

        def run() -> None:
            try:
                target()  # type: ignore[operator]
            except BaseException as exc:
                self.error = exc
            finally:
                self.done.set()

        threading.Thread(target=run, daemon=True).start()


def _start_slow_query(client: flight.FlightClient, server: RunningServer
                      ) -> tuple[flight.FlightInfo, _Background, list[int]]:
    """Plan SLOW and stream it in the background until it is busy on the server; the
    server's processes at that time."""
    descriptor = flight.FlightDescriptor.for_command(pack(sql.CommandStatementQuery(query=SLOW)))
    info = client.get_flight_info(descriptor, bearer(TOKEN))
    ticket = info.endpoints[0].ticket.ticket
    work = _Background(lambda: _drain(server.port, ticket))
    pids = wait_busy(server.process.pid)
    return info, work, pids


def test_adbc_cancel_stops_the_query(one_slot: RunningServer) -> None:
    conn = adbc_connect(one_slot)
    cur = conn.cursor()

    def run() -> None:
        cur.execute(SLOW)
        cur.fetchall()

    work = _Background(run)
    pids = wait_busy(one_slot.process.pid)
    cur.adbc_cancel()
    assert work.done.wait(10), "cancel did not end the query"
    assert isinstance(work.error, adbc_driver_manager.Error)
    assert_cpu_freed(pids)
    cur.close()
    conn.close()


def test_grpc_cancel_stops_the_query(one_slot: RunningServer) -> None:
    client = flight.connect(one_slot.uri)
    descriptor = flight.FlightDescriptor.for_command(pack(sql.CommandStatementQuery(query=SLOW)))
    ticket = client.get_flight_info(descriptor, bearer(TOKEN)).endpoints[0].ticket.ticket
    client.close()
    channel = grpc.insecure_channel(f"127.0.0.1:{one_slot.port}")
    do_get = channel.unary_stream("/arrow.flight.protocol.FlightService/DoGet",
                                  request_serializer=fpb.Ticket.SerializeToString,
                                  response_deserializer=fpb.FlightData.FromString)
    call = do_get(fpb.Ticket(ticket=ticket), metadata=[("authorization", f"Bearer {TOKEN}")])
    pids = wait_busy(one_slot.process.pid)
    call.cancel()
    with pytest.raises(grpc.RpcError) as err:
        next(call)
    assert err.value.code() == grpc.StatusCode.CANCELLED
    channel.close()
    assert_cpu_freed(pids)


def test_cancel_flight_info_stops_the_query(one_slot: RunningServer) -> None:
    client = flight.connect(one_slot.uri)
    options = bearer(TOKEN)
    info, work, pids = _start_slow_query(client, one_slot)
    request = fpb.CancelFlightInfoRequest(info=fpb.FlightInfo.FromString(info.serialize()))
    (result,) = client.do_action(flight.Action("CancelFlightInfo", request.SerializeToString()),
                                 options)
    status = fpb.CancelFlightInfoResult.FromString(result.body.to_pybytes()).status
    assert status == fpb.CANCEL_STATUS_CANCELLED
    assert work.done.wait(10)
    assert isinstance(work.error, grpc.RpcError)
    assert work.error.code() == grpc.StatusCode.CANCELLED
    assert_cpu_freed(pids)
    (again,) = client.do_action(flight.Action("CancelFlightInfo", request.SerializeToString()),
                                options)
    assert fpb.CancelFlightInfoResult.FromString(again.body.to_pybytes()).status == (
        fpb.CANCEL_STATUS_NOT_CANCELLABLE)
    client.close()


def test_full_queue_is_unavailable_at_once(one_slot: RunningServer) -> None:
    client = flight.connect(one_slot.uri)
    options = bearer(TOKEN)
    info, running, _ = _start_slow_query(client, one_slot)
    waiting_client = flight.connect(one_slot.uri)
    quick = flight.FlightDescriptor.for_command(
        pack(sql.CommandStatementQuery(query="SELECT count(*) AS n FROM tpch.region")))
    quick_info = waiting_client.get_flight_info(quick, options)
    waiting: list[int] = []
    quick_ticket = quick_info.endpoints[0].ticket.ticket
    queued = _Background(lambda: waiting.append(_drain(one_slot.port, quick_ticket)))
    time.sleep(0.5)
    assert not queued.done.is_set()  # it waits for the running query's slot
    started = time.monotonic()
    code, message = grpc_status_of_query(one_slot.port, "SELECT 1", TOKEN)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert message.startswith("server busy")
    assert time.monotonic() - started < 2
    # Refused before planning: at GetFlightInfo and at prepare, not only at DoGet.
    with pytest.raises(flight.FlightUnavailableError, match="server busy"):
        waiting_client.get_flight_info(quick, options)
    prepare = pack(sql.ActionCreatePreparedStatementRequest(query="SELECT 1"))
    with pytest.raises(flight.FlightUnavailableError, match="server busy"):
        list(waiting_client.do_action(flight.Action("CreatePreparedStatement", prepare),
                                      options))
    request = fpb.CancelFlightInfoRequest(info=fpb.FlightInfo.FromString(info.serialize()))
    list(client.do_action(flight.Action("CancelFlightInfo", request.SerializeToString()),
                          options))
    assert running.done.wait(10) and queued.done.wait(10)
    assert queued.error is None
    assert waiting == [2]  # the schema message and one batch
    client.close()
    waiting_client.close()


def test_workers_end_with_a_killed_server(demo_warehouse: Path, tmp_path: Path) -> None:
    """A server killed mid-query leaves no worker computing on."""
    with running_server(demo_warehouse, tmp_path, [], TOKEN) as server:
        client = flight.connect(server.uri)
        _, _, pids = _start_slow_query(client, server)
        workers = [pid for pid in pids if pid != server.process.pid]
        assert workers
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        deadline = time.monotonic() + 5
        while any(Path(f"/proc/{pid}").exists() for pid in workers):
            assert time.monotonic() < deadline, "workers outlived their server"
            time.sleep(0.1)
        client.close()
