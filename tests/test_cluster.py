"""Single-node cluster: `krishiv serve --executors 2` runs queries on executor processes."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import grpc
import pyarrow.flight as flight
import pytest

from catalog import IcebergCatalog, TableIdent
from engine.distributed.shuffle import RESULT_TICKET_PREFIX
from flight_server.cluster import (
    LINKS_DIR,
    MIN_SHUFFLE_PARTITIONS,
    REGISTER,
    WORK_DIR_OWNER,
    CoordinatorService,
)
from flight_server.generated import FlightSql_pb2 as sql
from flight_server.protocol import pack
from tests.conftest import adbc_connect
from tests.cpu import assert_cpu_freed, process_tree, wait_busy
from tests.flight_raw import bearer, grpc_status_of_query
from tests.reference import as_multiset, duckdb_over_catalog, matches, tpch_queries
from tests.servers import RunningServer, running_server, start_krishiv

TOKEN = "cluster-client-token"


@pytest.fixture(scope="module")
def cluster(demo_warehouse: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[RunningServer]:
    # No broadcast joins: every join shuffles both inputs, and executors fetch each
    # other's files over Flight (the by-hand cluster below runs with the default limit
    # and reads them in place, so TPC-H is checked both ways).
    args = ["--executors", "2", "--default-schema", "tpch", "--broadcast-limit", "0",
            "--shuffle-partitions", "4"]
    with running_server(demo_warehouse, tmp_path_factory.mktemp("cluster"), args,
                        TOKEN, {"KRISHIV_LOCAL_SHUFFLE_READS": "0"}) as server:
        yield server


@pytest.fixture(scope="module")
def duck(demo_warehouse: Path) -> duckdb.DuckDBPyConnection:
    return duckdb_over_catalog(IcebergCatalog.embedded(str(demo_warehouse)))


def _executors_that_ran_tasks(server: RunningServer) -> set[str]:
    return set(re.findall(r"task \S+ finished on (executor-\w+)", server.log()))


def test_tpch_on_executors_matches_duckdb(cluster: RunningServer,
                                          duck: duckdb.DuckDBPyConnection) -> None:
    texts = tpch_queries(duck)
    with adbc_connect(cluster) as conn, conn.cursor() as cur:
        for number in range(1, 23):
            cur.execute(texts[number])
            assert matches(cur.fetchall(), duck, texts[number]), f"q{number}"
    assert len(_executors_that_ran_tasks(cluster)) == 2  # both executors worked


# Queries whose later steps reuse an earlier hash partitioning, and outer joins whose
# null-padded side must not be taken as partitioned (a NULL group split over tasks
# would come back once per task).
REUSED_PARTITIONING = [
    "SELECT l_orderkey, o_orderdate, sum(l_quantity) FROM orders JOIN lineitem "
    "ON o_orderkey = l_orderkey GROUP BY l_orderkey, o_orderdate",
    # Groups joined on afterwards, so they are hashed rather than gathered into one task:
    "SELECT g.o_custkey, g.n, c_name FROM (SELECT o_custkey, count(*) AS n FROM customer "
    "LEFT JOIN orders ON c_custkey = o_custkey GROUP BY o_custkey) g "
    "LEFT JOIN customer ON g.o_custkey = c_custkey",
    "SELECT g.c_custkey, g.n, n_name FROM (SELECT c_custkey, count(o_orderkey) AS n "
    "FROM customer LEFT JOIN orders ON c_custkey = o_custkey GROUP BY c_custkey) g "
    "LEFT JOIN nation ON g.c_custkey = n_nationkey",
    "SELECT g.o_custkey, g.c_custkey, g.n, n_name FROM (SELECT o_custkey, c_custkey, "
    "count(*) AS n FROM customer FULL JOIN orders ON c_custkey = o_custkey "
    "GROUP BY o_custkey, c_custkey) g LEFT JOIN nation ON g.o_custkey = n_nationkey",
    "SELECT g.c_custkey, g.n, n_name FROM (SELECT c_custkey, count(*) AS n FROM orders "
    "RIGHT JOIN customer ON c_custkey = o_custkey GROUP BY c_custkey) g "
    "LEFT JOIN nation ON g.c_custkey = n_nationkey",
    "SELECT o_orderkey, c_name, sum(l_quantity) FROM customer JOIN orders "
    "ON c_custkey = o_custkey JOIN lineitem ON l_orderkey = o_orderkey "
    "WHERE o_orderkey IN (SELECT l_orderkey FROM lineitem GROUP BY l_orderkey "
    "HAVING sum(l_quantity) > 150) GROUP BY o_orderkey, c_name",
    "SELECT ps_partkey, ps_suppkey, count(*) FROM partsupp JOIN lineitem "
    "ON ps_partkey = l_partkey AND ps_suppkey = l_suppkey JOIN part ON p_partkey = l_partkey "
    "GROUP BY ps_partkey, ps_suppkey",
    "SELECT k, sum(v) FROM (SELECT o_custkey AS k, o_totalprice AS v FROM orders) t "
    "GROUP BY k",
]


def test_long_ordered_results_keep_their_order_on_executors(
        cluster: RunningServer, duck: duckdb.DuckDBPyConnection) -> None:
    text = ("SELECT l_orderkey, l_linenumber, l_comment FROM lineitem "
            "ORDER BY l_orderkey DESC, l_linenumber")
    with adbc_connect(cluster) as conn, conn.cursor() as cur:
        cur.execute(text)
        got = cur.fetchall()
    assert len(got) > 32_768
    assert matches(got, duck, text)


def test_join_inputs_found_small_are_broadcast(demo_warehouse: Path, tmp_path: Path,
                                               duck: duckdb.DuckDBPyConnection) -> None:
    """Adaptive broadcast: with a limit below most tables' files, a join input that
    filters runs first, and if it wrote at most the limit every join task reads all
    its partitions (here over Flight) while the other input is not shuffled."""
    args = ["--executors", "2", "--default-schema", "tpch", "--broadcast-limit", "64K"]
    texts = tpch_queries(duck)
    with running_server(demo_warehouse, tmp_path, args, TOKEN,
                        {"KRISHIV_LOCAL_SHUFFLE_READS": "0"}) as server:
        with adbc_connect(server) as conn, conn.cursor() as cur:
            for number in range(1, 23):
                cur.execute(texts[number])
                assert as_multiset(cur.fetchall()) == as_multiset(
                    duck.execute(texts[number]).fetchall()), f"q{number}"
            cur.execute("EXPLAIN " + texts[5])
            planned = dict(cur.fetchall())["distributed_plan"]
            cur.execute("EXPLAIN ANALYZE " + texts[5])
            plan = dict(cur.fetchall())["distributed_plan_with_metrics"]
        assert planned.endswith("(EXPLAIN ANALYZE shows the plan that ran)")
        assert "(whole)" not in planned
        # The filtered orders (2,303 rows) and their join with customers each ran first
        # and were read whole; lineitem is read in the join's own stage.
        assert re.search(r"Stage 2: .* reads stage 1 \(whole\), tpch.customer", plan), plan
        assert re.search(r"Stage 3: .* reads stage 2 \(whole\), tpch.lineitem", plan), plan
        assert "over Flight" in server.log()


def test_a_stage_planned_over_plain_strings_answers_right(
        demo_warehouse: Path, tmp_path: Path, duck: duckdb.DuckDBPyConnection) -> None:
    """At this limit customer and nation are broadcast into q7's join of the lineitem and
    orders shuffles: a stage DataFusion cannot plan with its scans' strings read as
    views, so its tasks plan it over plain strings. The answers are DuckDB's."""
    args = ["--executors", "2", "--default-schema", "tpch", "--broadcast-limit", "200K"]
    texts = tpch_queries(duck)
    with (running_server(demo_warehouse, tmp_path, args, TOKEN) as server,
          adbc_connect(server) as conn, conn.cursor() as cur):
        cur.execute("EXPLAIN " + texts[7])
        planned = dict(cur.fetchall())["distributed_plan"]
        assert re.search(r"reads stage 1, stage 2, tpch.customer .*tpch.nation .*"
                         r"tpch.nation", planned), planned
        cur.execute(texts[7])
        assert as_multiset(cur.fetchall()) == as_multiset(duck.execute(texts[7]).fetchall())


def test_reused_partitioning_matches_duckdb(cluster: RunningServer,
                                            duck: duckdb.DuckDBPyConnection) -> None:
    with adbc_connect(cluster) as conn, conn.cursor() as cur:
        for query in REUSED_PARTITIONING:
            cur.execute(query)
            got = cur.fetchall()
            assert as_multiset(got) == as_multiset(duck.execute(query).fetchall()), query


def test_parameters_and_writes_with_executors(cluster: RunningServer) -> None:
    with adbc_connect(cluster) as conn, conn.cursor() as cur:
        cur.execute("SELECT n_name FROM nation WHERE n_nationkey = ?", (3,))
        assert cur.fetchall() == [("CANADA",)]
        cur.execute("CREATE TABLE public.cluster_t AS SELECT r_regionkey FROM region")
        cur.execute("SELECT count(*) FROM public.cluster_t")
        assert cur.fetchall() == [(5,)]
        # The same text again after a write: the coordinator's kept plan must not serve
        # the old snapshot's files.
        with_text = ("WITH kept AS (SELECT r_regionkey FROM public.cluster_t) "
                     "SELECT count(*) FROM kept")
        cur.execute(with_text)
        assert cur.fetchall() == [(5,)]
        cur.execute("INSERT INTO public.cluster_t VALUES (7)")
        cur.execute("SELECT count(*) FROM public.cluster_t")
        assert cur.fetchall() == [(6,)]
        cur.execute(with_text)  # kept too (its WITH name is no table), and replaced
        assert cur.fetchall() == [(6,)]
        cur.execute("DROP TABLE public.cluster_t")


def test_a_missing_data_file_is_an_error_on_executors(cluster: RunningServer,
                                                      demo_warehouse: Path) -> None:
    """A query planned into stages fails UNAVAILABLE, naming the file, when a data file
    of a table's current version is gone, rather than answer without its rows."""
    read = "SELECT count(*) FROM public.lost_on_executors"
    with adbc_connect(cluster) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE public.lost_on_executors (id BIGINT)")
        cur.execute("INSERT INTO public.lost_on_executors VALUES (1), (2)")
        cur.execute("INSERT INTO public.lost_on_executors VALUES (3)")
        cur.execute(read)
        assert cur.fetchall() == [(3,)]
        gone = Path(IcebergCatalog.embedded(str(demo_warehouse)).scan(
            TableIdent("public", "lost_on_executors")).data_files[0])
        moved = gone.with_name("moved-away")
        gone.rename(moved)
        try:
            code, message = grpc_status_of_query(cluster.port, read, TOKEN)
            assert code == grpc.StatusCode.UNAVAILABLE
            assert message == ("cannot read table public.lost_on_executors: its data file "
                               f"{gone} is missing")
        finally:
            moved.rename(gone)
        cur.execute(read)
        assert cur.fetchall() == [(3,)]
        cur.execute("DROP TABLE public.lost_on_executors")


JOIN_QUERY = ("SELECT o_orderpriority, count(*) AS n FROM orders JOIN lineitem "
              "ON l_orderkey = o_orderkey GROUP BY o_orderpriority ORDER BY o_orderpriority")


def test_explain_shows_stages_exchanges_and_partitions(cluster: RunningServer) -> None:
    with adbc_connect(cluster) as conn, conn.cursor() as cur:
        cur.execute(f"EXPLAIN {JOIN_QUERY}")
        rows = dict(cur.fetchall())
    assert "physical_plan" in rows  # DataFusion's own plans come too
    stages = rows["distributed_plan"].splitlines()
    assert len(stages) >= 4
    # Both join inputs are hash-partitioned on the join key; the partial aggregates go
    # straight to the task that sorts the result.
    assert sum("-> hash(c0) into 4 partitions" in line for line in stages) == 2
    assert any("[join, aggregate]" in line and "-> gather into 1 partition" in line
               for line in stages)
    assert "join" in rows["distributed_plan"] and "aggregate" in rows["distributed_plan"]
    assert stages[-1].endswith("-> result (gather to the coordinator)")
    assert "4 task(s)" in rows["distributed_plan"]


def test_explain_analyze_has_metrics_per_stage(cluster: RunningServer) -> None:
    with adbc_connect(cluster) as conn, conn.cursor() as cur:
        cur.execute(f"EXPLAIN ANALYZE {JOIN_QUERY}")
        (plan_type, text), = cur.fetchall()
    assert plan_type == "distributed_plan_with_metrics"
    lines = text.splitlines()
    assert all(re.search(r"ran on executor-\w+.*: \d+ rows, \d+ bytes written, \d+ bytes "
                         r"fetched from other executors, [0-9.]+ s in tasks$", line)
               for line in lines), text
    fetched = [int(n) for n in re.findall(r"(\d+) bytes fetched from other executors", text)]
    assert sum(fetched) > 0  # two executors: some partitions crossed
    assert any("reads tpch.lineitem" in line and ": 60175 rows" in line for line in lines)
    assert re.search(r"ran on executor-\w+, executor-\w+", text)  # a stage used both
    assert lines[-1].split("ran on ")[1].startswith("executor-")
    assert ": 5 rows" in lines[-1]


def test_shuffle_data_crosses_executors_over_flight(cluster: RunningServer,
                                                    duck: duckdb.DuckDBPyConnection) -> None:
    with adbc_connect(cluster) as conn, conn.cursor() as cur:
        cur.execute(JOIN_QUERY)
        assert cur.fetchall() == duck.execute(JOIN_QUERY).fetchall()
    fetches = re.findall(r"(executor-\w+) fetched stage \d+ partition \d+ of map task \d+ "
                         r"from (executor-\w+) over Flight: (\d+) rows, \d+ bytes",
                         cluster.log())
    crossed = [(reader, writer, int(rows)) for reader, writer, rows in fetches
               if reader != writer]
    assert crossed, "no shuffle partition was fetched from another executor"
    assert sum(rows for _, _, rows in crossed) > 0


def test_split_scans_over_files_and_subqueries_see_whole_tables(cluster: RunningServer
                                                                ) -> None:
    with adbc_connect(cluster) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE public.split_t (k BIGINT, v BIGINT)")
        for start in (0, 100, 200):  # three commits: three data files
            cur.execute(f"INSERT INTO public.split_t SELECT value % 7, value "
                        f"FROM generate_series({start}, {start + 99})")
        cur.execute("EXPLAIN SELECT k, sum(v) FROM public.split_t GROUP BY k")
        plan = dict(cur.fetchall())["distributed_plan"]
        assert "3 task(s) [aggregate] reads public.split_t (3 file(s), split by file)" in plan
        cur.execute("SELECT k, sum(v) FROM public.split_t GROUP BY k ORDER BY k")
        expected = [(k, sum(v for v in range(300) if v % 7 == k)) for k in range(7)]
        assert cur.fetchall() == expected
        # Were the subquery's max taken per file, each task would keep its own top 10.
        cur.execute("SELECT count(*) FROM public.split_t "
                    "WHERE v > (SELECT max(v) FROM public.split_t) - 10")
        assert cur.fetchall() == [(10,)]
        cur.execute("DROP TABLE public.split_t")


def test_not_in_keeps_null_semantics_and_explain_says_one_task(cluster: RunningServer
                                                                ) -> None:
    with adbc_connect(cluster) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE public.with_nulls (x BIGINT)")
        cur.execute("INSERT INTO public.with_nulls VALUES (1), (NULL)")
        query = ("SELECT n_nationkey FROM nation WHERE n_nationkey NOT IN "
                 "(SELECT x FROM public.with_nulls)")
        cur.execute(query)
        assert cur.fetchall() == []  # a NULL in the list: no row is NOT IN it
        cur.execute(f"EXPLAIN {query}")
        plan = dict(cur.fetchall())["distributed_plan"]
        assert plan.startswith("Stage 0: 1 task runs the whole query (NOT IN")
        cur.execute("DROP TABLE public.with_nulls")


def test_query_errors_on_executors_keep_their_status(cluster: RunningServer) -> None:
    code, message = grpc_status_of_query(
        cluster.port, "SELECT 10 / (n_nationkey - 3) FROM nation", TOKEN)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "Divide by zero" in message
    assert "failed 4 times" not in message  # not retried: the query itself is wrong


def test_control_calls_need_the_executor_token(cluster: RunningServer) -> None:
    client = flight.connect(cluster.uri)
    with pytest.raises(flight.FlightUnauthorizedError, match="executor task token"):
        list(client.do_action(flight.Action("krishiv.executor.register",
                                            b'{"executor": "rogue", "address": "grpc://x:1"}'),
                              bearer(TOKEN)))
    client.close()
    code = _status_of_register(cluster.port)
    assert code == grpc.StatusCode.UNAUTHENTICATED


def _status_of_register(port: int) -> grpc.StatusCode:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_stream("/arrow.flight.protocol.FlightService/DoAction",
                                request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        list(call(b"\n\x19krishiv.executor.register"))
    except grpc.RpcError as err:
        return err.code()
    finally:
        channel.close()
    return grpc.StatusCode.OK


def test_coordinator_with_executors_started_by_hand(
    demo_warehouse: Path, tmp_path: Path, duck: duckdb.DuckDBPyConnection
) -> None:
    executor_token = "hand-started-executor-token"
    env = {"KRISHIV_EXECUTOR_TASK_BEARER_TOKEN": executor_token}
    coordinator = start_krishiv(
        ["coordinator", "--warehouse", str(demo_warehouse), "--default-schema", "tpch"],
        tmp_path, env, None, "serving Flight SQL", 120.0)
    executors: list[RunningServer] = []
    try:
        for index in range(2):
            executors.append(start_krishiv(
                ["executor", "--coordinator", f"grpc://127.0.0.1:{coordinator.port}",
                 "--warehouse", str(demo_warehouse), "--work-dir", str(tmp_path / f"w{index}")],
                tmp_path, env, executor_token, "executor serving shuffle data", 60.0))
        texts = tpch_queries(duck)
        with adbc_connect(coordinator) as conn, conn.cursor() as cur:
            for number in range(1, 23):  # with broadcast joins (the default limit)
                cur.execute(texts[number])
                assert as_multiset(cur.fetchall()) == as_multiset(
                    duck.execute(texts[number]).fetchall()), f"q{number}"
            # q17's aggregate over lineitem keeps only the rows of the filtered parts
            # (read whole in the same stage) before grouping.
            cur.execute(f"EXPLAIN {texts[17]}")
            assert re.search(r"join, aggregate\] reads tpch\.lineitem .*tpch\.part .*whole",
                             dict(cur.fetchall())["distributed_plan"])
            # A full join broadcasts neither side: both are shuffled, into as many
            # partitions as the executors' machine has cores (one machine, counted once).
            shuffled = ("SELECT o_orderpriority, count(l_orderkey) FROM orders "
                        "FULL JOIN lineitem ON o_orderkey = l_orderkey GROUP BY o_orderpriority")
            cur.execute(shuffled)
            assert as_multiset(cur.fetchall()) == as_multiset(duck.execute(shuffled).fetchall())
            cur.execute(f"EXPLAIN {shuffled}")
            partitions = max(MIN_SHUFFLE_PARTITIONS, os.cpu_count() or 1)
            assert dict(cur.fetchall())["distributed_plan"].count(
                f"into {partitions} partitions") == 2
        assert len(_executors_that_ran_tasks(coordinator)) == 2
        # Same machine: each reads the other's shuffle files in place, not over Flight.
        logs = "".join(e.log() for e in executors)
        assert re.search(r"read stage \d+ partition \d+ of map task \d+ of executor-\w+ in "
                         r"place: [1-9]\d* bytes", logs)
        assert "over Flight" not in logs
        # finished jobs leave no shuffle files behind (the folders of links to table
        # files stay, for the next tasks that read those files)
        deadline = time.monotonic() + 10
        kept = {WORK_DIR_OWNER, LINKS_DIR}
        while time.monotonic() < deadline and any(
                any(f.name not in kept for f in (tmp_path / f"w{i}").iterdir())
                for i in range(2)):
            time.sleep(0.2)
        assert sorted(f.name for i in range(2) for f in (tmp_path / f"w{i}").iterdir()) == [
            WORK_DIR_OWNER, WORK_DIR_OWNER, LINKS_DIR, LINKS_DIR]
    finally:
        for process in [*executors, coordinator]:
            process.stop()


def test_coordinator_refuses_to_start_without_executor_token(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="a coordinator needs KRISHIV_EXECUTOR_TASK_BEARER"):
        start_krishiv(["coordinator", "--warehouse", str(tmp_path / "wh")], tmp_path, {}, None,
                      "serving Flight SQL", 60.0)


def _executors(pid: int) -> list[int]:
    """The executor processes `krishiv serve --executors N` (pid) started."""
    found = []
    for child in process_tree(pid)[1:]:
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"executor" in command:
            found.append(child)
    return found


def test_losing_executors(demo_warehouse: Path, tmp_path: Path) -> None:
    """One executor killed: queries go on; every executor killed: UNAVAILABLE, no hang."""
    args = ["--executors", "2", "--default-schema", "tpch", "--heartbeat-timeout", "2",
            "--executor-grace", "2"]
    with (
        running_server(demo_warehouse, tmp_path, args, TOKEN) as server,
        adbc_connect(server) as conn,
        conn.cursor() as cur,
    ):
        # Both executors first: with a grace of 2 s, a query may not wait for a slow start.
        deadline = time.monotonic() + 60
        while server.log().count("joined at") < 2:
            assert time.monotonic() < deadline, "the executors did not join"
            time.sleep(0.1)
        for _ in range(2):
            cur.execute("SELECT count(*) FROM region")
            assert cur.fetchall() == [(5,)]
        executors = _executors(server.process.pid)
        assert len(executors) == 2
        os.kill(executors[0], signal.SIGKILL)
        for _ in range(4):  # launches to the dead one fail and move to the other
            cur.execute("SELECT count(*) FROM nation")
            assert cur.fetchall() == [(25,)]
        os.kill(executors[1], signal.SIGKILL)
        started = time.monotonic()
        code, message = grpc_status_of_query(server.port, "SELECT 1", TOKEN)
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "no executors are available" in message
        assert time.monotonic() - started < 20


def test_stopped_cluster_leaves_no_table_links(demo_warehouse: Path, tmp_path: Path) -> None:
    """The coordinator and its executors remove their folders of table file links when
    they stop (executors once left theirs in the temp folder at every stop)."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    args = ["--executors", "2", "--default-schema", "tpch"]
    with (
        running_server(demo_warehouse, tmp_path, args, TOKEN, {"TMPDIR": str(temp)}) as server,
        adbc_connect(server) as conn,
        conn.cursor() as cur,
    ):
        cur.execute("SELECT count(*) FROM nation JOIN region ON n_regionkey = r_regionkey")
        assert cur.fetchall() == [(25,)]
        assert len(list(temp.glob("krishiv-tables-*"))) == 3  # coordinator, 2 executors
    assert list(temp.glob("krishiv-tables-*")) == []


def test_cancel_reaches_the_executor(cluster: RunningServer) -> None:
    """The client's cancel is forwarded: the executor stops its task's work and reports it."""
    conn = adbc_connect(cluster)
    cur = conn.cursor()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            # minutes of work: its task only ends soon if the cancel reaches the executor
            cur.execute("SELECT count(*) FROM lineitem a, lineitem b, nation c "
                        "WHERE a.l_orderkey + b.l_orderkey > c.n_nationkey")
            cur.fetchall()
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    pids = wait_busy(cluster.process.pid)  # running on an executor by now
    cur.adbc_cancel()
    worker.join(10)
    assert failure and "DoGet" in str(failure[0])
    assert_cpu_freed(pids)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "failed: QueryCancelled" not in cluster.log():
        time.sleep(0.1)
    assert "failed: QueryCancelled" in cluster.log()
    assert re.search(r"cancel \S+: running", cluster.log())
    cur.close()
    conn.close()


@pytest.fixture(scope="module")
def direct_cluster(demo_warehouse: Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[RunningServer]:
    args = ["--executors", "2", "--default-schema", "tpch", "--direct-results"]
    with running_server(demo_warehouse, tmp_path_factory.mktemp("direct"), args,
                        TOKEN) as server:
        yield server


def test_direct_results_come_from_the_executors(direct_cluster: RunningServer,
                                                duck: duckdb.DuckDBPyConnection) -> None:
    client = flight.connect(direct_cluster.uri)
    descriptor = flight.FlightDescriptor.for_command(
        pack(sql.CommandStatementQuery(query=JOIN_QUERY)))
    info = client.get_flight_info(descriptor, bearer(TOKEN))
    client.close()
    locations = {loc.uri.decode() for e in info.endpoints for loc in e.locations}
    assert locations and all(uri.startswith("grpc://127.0.0.1:") for uri in locations)
    assert f":{direct_cluster.port}" not in " ".join(locations)  # not the coordinator
    texts = tpch_queries(duck)
    with adbc_connect(direct_cluster) as conn, conn.cursor() as cur:
        for number in (1, 3, 13, 18):
            cur.execute(texts[number])
            assert matches(cur.fetchall(), duck, texts[number]), f"q{number}"


def test_executors_refuse_forged_and_unsigned_tickets(direct_cluster: RunningServer) -> None:
    client = flight.connect(direct_cluster.uri)
    descriptor = flight.FlightDescriptor.for_command(
        pack(sql.CommandStatementQuery(query="SELECT count(*) FROM region")))
    (endpoint,) = client.get_flight_info(descriptor, bearer(TOKEN)).endpoints
    client.close()
    executor = flight.connect(endpoint.locations[0].uri.decode())
    assert executor.do_get(endpoint.ticket).read_all().column(0).to_pylist() == [5]
    forged = endpoint.ticket.ticket[:-1] + (b"0" if endpoint.ticket.ticket[-1:] != b"0"
                                            else b"1")
    with pytest.raises(flight.FlightUnauthenticatedError, match="signature does not match"):
        executor.do_get(flight.Ticket(forged)).read_all()
    signed = endpoint.ticket.ticket.removeprefix(RESULT_TICKET_PREFIX)
    key = json.loads(base64.urlsafe_b64decode(signed.rpartition(b".")[0]))["key"]
    with pytest.raises(flight.FlightUnauthenticatedError):
        executor.do_get(flight.Ticket(key.encode())).read_all()  # no executor token
    executor.close()


def test_default_shuffle_partitions_count_each_machines_cores_once() -> None:
    coordinator = CoordinatorService(None)
    try:
        for executor, address, cores in [("a", "grpc://10.0.0.1:7001", 8),
                                         ("b", "grpc://10.0.0.1:7002", 8),
                                         ("c", "grpc://10.0.0.2:7001", 4)]:
            coordinator.control(REGISTER, json.dumps(
                {"executor": executor, "address": address, "slots": 2, "cores": cores}
            ).encode())
        assert coordinator.shuffle_partitions() == 12  # two machines: 8 + 4 cores
    finally:
        coordinator.close()
    configured = CoordinatorService(None, partitions=5)
    assert configured.shuffle_partitions() == 5
    configured.close()


def test_the_result_stage_runs_on_the_coordinator(cluster: RunningServer,
                                                  duck: duckdb.DuckDBPyConnection) -> None:
    text = ("SELECT o_orderpriority, count(*) AS n FROM orders JOIN lineitem "
            "ON o_orderkey = l_orderkey GROUP BY o_orderpriority ORDER BY o_orderpriority")
    with adbc_connect(cluster) as conn, conn.cursor() as cur:
        cur.execute(f"EXPLAIN {text}")
        last = dict(cur.fetchall())["distributed_plan"].splitlines()[-1]
        assert re.match(r"Stage (\d+): 1 task\(s\) \[.*\] reads stage \d+ -> result", last), last
        stage = re.match(r"Stage (\d+)", last).group(1)  # type: ignore[union-attr]
        here = f"ran the result stage {stage} here: 5 rows"
        before = cluster.log().count(here)
        cur.execute(text)
        assert cur.fetchall() == duck.execute(text).fetchall()
        assert cluster.log().count(here) == before + 1
        # EXPLAIN ANALYZE runs it on an executor, which reports its metrics.
        cur.execute(f"EXPLAIN ANALYZE {text}")
        analyzed = dict(cur.fetchall())["distributed_plan_with_metrics"].splitlines()[-1]
        assert re.search(r"ran on executor-\w+: 5 rows", analyzed), analyzed
    assert cluster.log().count(here) == before + 1
