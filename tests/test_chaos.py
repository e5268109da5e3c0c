"""Chaos: executors fail, stall and die (SIGKILL) at chosen points while TPC-H queries run
on a coordinator with executors started by hand; every answer must equal DuckDB's.

Each fault is given to every executor with a `once` marker, so exactly one executor acts
on it per armed run; a killed executor is replaced by a fresh one (which must then be
used). `make test` runs two queries per fault point; the `soak` marker runs the five
join-and-aggregate queries in 20 seeded runs, each query under a fault point drawn at
random.
"""

from __future__ import annotations

import json
import random
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import adbc_driver_manager
import duckdb
import pyarrow.flight as flight
import pytest

from catalog import IcebergCatalog
from engine import EngineConfig, SqlEngine
from engine.distributed.stages import plan_distributed
from flight_server.cluster import METRICS, REPORT, final_apart
from tests.conftest import adbc_connect
from tests.reference import as_multiset, duckdb_over_catalog, tpch_queries
from tests.servers import RunningServer, start_krishiv

EXECUTOR_TOKEN = "chaos-executor-token"
QUICK = (3, 18)
SOAK = (3, 5, 9, 18, 21)
HEARTBEAT_TIMEOUT_S = 2.0


class ChaosCluster:
    """A coordinator and three executors, all given the same faults."""

    def __init__(self, warehouse: Path, folder: Path, faults: list[str],
                 coordinator_args: tuple[str, ...] = ()) -> None:
        self.warehouse = warehouse
        self.folder = folder
        # Fault i fires once its marker is removed (arm), and writes it again as it fires.
        self.markers = [folder / f"fault-{i}-fired" for i in range(len(faults))]
        self.faults = [f.replace("MARKER", str(m)) for f, m in zip(faults, self.markers,
                                                                  strict=True)]
        for marker in self.markers:
            marker.touch()
        self.executors: list[RunningServer] = []
        self.started = 0
        try:
            self._start(coordinator_args)
        except BaseException:
            self.stop()  # whatever did start
            raise

    def _start(self, coordinator_args: tuple[str, ...]) -> None:
        env = {"KRISHIV_EXECUTOR_TASK_BEARER_TOKEN": EXECUTOR_TOKEN,
               "KRISHIV_VALIDATE_STATE": "1"}
        self.coordinator = start_krishiv(
            ["coordinator", "--warehouse", str(self.warehouse), "--default-schema", "tpch",
             "--heartbeat-timeout", str(HEARTBEAT_TIMEOUT_S), "--executor-grace", "15",
             "--broadcast-limit", "0", "--shuffle-partitions", "3", *coordinator_args],
            self.folder, env, None, "serving Flight SQL", 120.0)
        for _ in range(3):
            self.add_executor()
        self.warm_up()
        self.baseline = _resources(self.coordinator.process.pid)

    def warm_up(self) -> None:
        """A fault-free query (five stages: faults are disarmed, and none aims past stage
        5), warming the pools that leak checks measure against."""
        with adbc_connect(self.coordinator) as conn, conn.cursor() as cur:
            cur.execute("SELECT n_name, count(*) FROM tpch.nation JOIN tpch.supplier "
                        "ON s_nationkey = n_nationkey GROUP BY n_name")
            cur.fetchall()

    def add_executor(self) -> None:
        env = {"KRISHIV_EXECUTOR_TASK_BEARER_TOKEN": EXECUTOR_TOKEN,
               "KRISHIV_ENABLE_FAULT_INJECTION": "1", "KRISHIV_FAULTS": " ".join(self.faults)}
        self.started += 1
        self.executors.append(start_krishiv(
            ["executor", "--coordinator", f"grpc://127.0.0.1:{self.coordinator.port}",
             "--warehouse", str(self.warehouse),
             "--work-dir", str(self.folder / f"work-{self.started}"),
             "--no-local-shuffle-reads"],  # the serving fault points need Flight fetches
            self.folder, env, EXECUTOR_TOKEN, "executor serving shuffle data", 60.0))
        deadline = time.monotonic() + 30
        while self.coordinator.log().count("joined at") < self.started:
            assert time.monotonic() < deadline, "executor did not join"
            time.sleep(0.1)

    def arm(self, fault: int = 0) -> None:
        self.markers[fault].unlink(missing_ok=True)

    def fired(self, fault: int = 0) -> bool:
        return self.markers[fault].exists()

    def replace_dead(self) -> int:
        dead = [e for e in self.executors if e.process.poll() is not None]
        for executor in dead:
            self.executors.remove(executor)
            self.add_executor()
        return len(dead)

    def leftover_shuffle_files(self) -> list[Path]:
        """Shuffle files still held by live executors (jobs end by deleting theirs)."""
        live = [self.folder / f"work-{i}" for i in range(1, self.started + 1)
                if any(e.process.poll() is None and f"work-{i}" in " ".join(e.process.args)
                       for e in self.executors)]
        while True:
            try:
                return [p for folder in live if folder.exists()
                        for p in folder.rglob("*.arrows")]
            except FileNotFoundError:
                continue  # a job's folder went while it was walked: look again

    def stop(self) -> None:
        for executor in self.executors:
            executor.stop()
        if hasattr(self, "coordinator"):
            self.coordinator.stop()


@pytest.fixture(scope="module")
def duck(demo_warehouse: Path) -> duckdb.DuckDBPyConnection:
    return duckdb_over_catalog(IcebergCatalog.embedded(str(demo_warehouse)))


@pytest.fixture(scope="module")
def expected(duck: duckdb.DuckDBPyConnection) -> dict[int, list[tuple[object, ...]]]:
    texts = tpch_queries(duck)
    return {n: as_multiset(duck.execute(texts[n]).fetchall()) for n in SOAK}


@pytest.fixture()
def chaos(demo_warehouse: Path, tmp_path: Path, request: pytest.FixtureRequest
          ) -> Iterator[ChaosCluster]:
    cluster = ChaosCluster(demo_warehouse, tmp_path, request.param)
    try:
        yield cluster
    finally:
        cluster.stop()


def _run(cluster: ChaosCluster, duck: duckdb.DuckDBPyConnection, number: int
         ) -> list[tuple[object, ...]]:
    with adbc_connect(cluster.coordinator) as conn, conn.cursor() as cur:
        cur.execute(tpch_queries(duck)[number])
        return as_multiset(cur.fetchall())


KILLS = {
    "map time": "kill@task_start:attempt=0,once=MARKER",
    "mid-shuffle": "kill@mid_shuffle:attempt=0,once=MARKER",
    "after its shuffle write": "kill@after_write:attempt=0,once=MARKER",
    "while serving shuffle data": "kill@serving:once=MARKER",
}
OTHER = {
    "task failure": "fail@task_start:attempt=0,once=MARKER",
    "slow task": "delay@task_start:attempt=0,seconds=1.5,once=MARKER",
}


@pytest.mark.parametrize("chaos", [[f] for f in [*KILLS.values(), *OTHER.values()]],
                         ids=[*KILLS, *OTHER], indirect=True)
def test_answers_survive_faults(chaos: ChaosCluster, duck: duckdb.DuckDBPyConnection,
                                expected: dict[int, list[tuple[object, ...]]]) -> None:
    kills = chaos.faults[0].startswith("kill")
    for number in QUICK:
        chaos.arm()
        assert _run(chaos, duck, number) == expected[number], f"q{number}"
        assert chaos.fired(), "the fault never fired"
        if kills:
            assert chaos.replace_dead() == 1
    _assert_clean(chaos)


def test_answers_survive_a_kill_while_the_result_is_fetched(
        demo_warehouse: Path, tmp_path: Path, duck: duckdb.DuckDBPyConnection,
        expected: dict[int, list[tuple[object, ...]]]) -> None:
    """The executor holding the result dies as the coordinator reads it: the job runs
    again and the client still gets every row exactly once."""
    result_stage = _result_stages(demo_warehouse, duck)[3]
    cluster = ChaosCluster(demo_warehouse, tmp_path,
                           [f"kill@serving:stage={result_stage},once=MARKER"])
    try:
        cluster.arm()
        assert _run(cluster, duck, 3) == expected[3]
        assert cluster.fired() and cluster.replace_dead() == 1
        assert "result of" in cluster.coordinator.log()  # it was lost, and run again
        _assert_clean(cluster)
    finally:
        cluster.stop()


def _result_stages(warehouse: Path, duck: duckdb.DuckDBPyConnection) -> dict[int, int]:
    """The number of each soak query's last stage on executors (the coordinator reads its
    output), as this cluster's settings plan it."""
    engine = SqlEngine(IcebergCatalog.embedded(str(warehouse)),
                       EngineConfig(default_schema="tpch"))
    try:
        plans = {n: final_apart(plan_distributed(engine, tpch_queries(duck)[n], "tpch", None,
                                                 3), True, 0)[0] for n in SOAK}
        return {n: plan.stages[-1].stage for n, plan in plans.items() if plan is not None}
    finally:
        engine.close()


def _assert_clean(cluster: ChaosCluster) -> None:
    deadline = time.monotonic() + 10
    while cluster.leftover_shuffle_files() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cluster.leftover_shuffle_files() == []
    assert "Traceback" not in cluster.coordinator.log()
    metrics = _control(cluster, METRICS, {})
    assert metrics["running_jobs"] == 0 and metrics["sessions"] == 0, metrics
    # Descriptors stay near the warmed-up baseline. Thread pools may have grown with the
    # chaos (they are bounded), so threads are checked for growth from query to query.
    pid = cluster.coordinator.process.pid
    assert _resources(pid)[1] <= cluster.baseline[1] + 8, (cluster.baseline, _resources(pid))
    # Pools grow lazily, by timing: settle them, then a leak of one thread per query would
    # show as +6 over six more queries.
    for _ in range(3):
        cluster.warm_up()
    settled = _resources(pid)
    for _ in range(6):
        cluster.warm_up()
    assert _resources(pid)[0] <= settled[0] + 3, (settled, _resources(pid))


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(20))
def test_soak_random_faults(seed: int, demo_warehouse: Path, tmp_path: Path,
                            duck: duckdb.DuckDBPyConnection,
                            expected: dict[int, list[tuple[object, ...]]]) -> None:
    """Each seeded run: the five queries in a random order, each with one fault point
    drawn at random (every kill, failure and delay point, and a kill while the query's
    result is fetched) armed for it."""
    rng = random.Random(seed)
    result_stage = _result_stages(demo_warehouse, duck)
    points = [*KILLS.values(), *OTHER.values()]
    result_faults = {n: len(points) + i for i, n in enumerate(SOAK)}
    faults = points + [f"kill@serving:stage={result_stage[n]},once=MARKER" for n in SOAK]
    cluster = ChaosCluster(demo_warehouse, tmp_path, faults)
    try:
        for number in rng.sample(SOAK, len(SOAK)):
            fault = rng.choice([*range(len(points)), result_faults[number]])
            cluster.arm(fault)
            assert _run(cluster, duck, number) == expected[number], (
                f"seed {seed} q{number} fault {faults[fault]}")
            assert cluster.fired(fault), f"seed {seed} q{number}: {faults[fault]} never fired"
            cluster.replace_dead()
        _assert_clean(cluster)
    finally:
        cluster.stop()


def test_a_task_failing_every_time_fails_its_query_after_the_retries(
        demo_warehouse: Path, tmp_path: Path, duck: duckdb.DuckDBPyConnection,
        expected: dict[int, list[tuple[object, ...]]]) -> None:
    last = _result_stages(demo_warehouse, duck)[3]  # its task 0 fails, every attempt
    cluster = ChaosCluster(demo_warehouse, tmp_path,
                           [f"fail@task_start:stage={last},partition=0"],
                           ("--task-retries", "2"))
    try:
        with pytest.raises(adbc_driver_manager.Error, match=r"failed 2 times: InjectedFault"):
            _run(cluster, duck, 3)
        assert _control(cluster, METRICS, {})["task_retries"] == 1
        _assert_clean(cluster)
    finally:
        cluster.stop()


def _control(cluster: ChaosCluster, kind: str, body: dict[str, object]) -> dict[str, object]:
    client = flight.connect(cluster.coordinator.uri)
    try:
        options = flight.FlightCallOptions(headers=[
            (b"authorization", f"Bearer {EXECUTOR_TOKEN}".encode())])
        (result,) = client.do_action(flight.Action(kind, json.dumps(body).encode()), options)
        return dict(json.loads(result.body.to_pybytes()))
    finally:
        client.close()


@pytest.mark.parametrize("chaos", [[]], indirect=True)
def test_stale_completions_are_rejected_and_counted(
        chaos: ChaosCluster, duck: duckdb.DuckDBPyConnection,
        expected: dict[int, list[tuple[object, ...]]]) -> None:
    assert _run(chaos, duck, 3) == expected[3]
    job, stage, stage_attempt, partition, executor = re.findall(
        r"task ([0-9a-f-]{36})/(\d+)\.(\d+)/(\d+) finished on (executor-\w+)",
        chaos.coordinator.log())[-1]
    before = int(str(_control(chaos, METRICS, {})["rejected_reports"]))
    task = {"job": job, "stage": int(stage), "stage_attempt": int(stage_attempt),
            "partition": int(partition)}
    # The very report again (its job is over), and one from an attempt never launched.
    _control(chaos, REPORT, {"executor": executor, **task, "attempt": 0, "ok": True})
    _control(chaos, REPORT, {"executor": executor, **task, "attempt": 7, "ok": False,
                             "error_kind": "InjectedFault", "error": "late"})
    assert _control(chaos, METRICS, {})["rejected_reports"] == before + 2
    assert _run(chaos, duck, 3) == expected[3]  # and nothing else changed


@pytest.mark.parametrize("chaos", [[]], indirect=True)
def test_losing_every_executor_fails_fast_and_new_ones_are_used(
        chaos: ChaosCluster, duck: duckdb.DuckDBPyConnection,
        expected: dict[int, list[tuple[object, ...]]]) -> None:
    assert _run(chaos, duck, 18) == expected[18]
    failure: list[BaseException] = []

    def run_query() -> None:
        try:
            _run(chaos, duck, 21)
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=run_query)
    worker.start()
    time.sleep(0.3)  # the job is under way
    for executor in chaos.executors:
        executor.process.send_signal(signal.SIGKILL)
    started = time.monotonic()
    worker.join(60)
    # Heartbeat timeout (2 s) plus the grace period (15 s), then UNAVAILABLE; no hang.
    assert failure and "no executors are available" in str(failure[0])
    assert time.monotonic() - started < 30
    with adbc_connect(chaos.coordinator) as conn:  # another session is served meanwhile
        objects = conn.adbc_get_objects(depth="db_schemas").read_all().to_pylist()
        assert "tpch" in {s["db_schema_name"] for c in objects for s in c["catalog_db_schemas"]}
    # A query submitted while no executor is left waits; executors joining mid-job run it.
    answers: list[list[tuple[object, ...]]] = []
    waiting = threading.Thread(target=lambda: answers.append(_run(chaos, duck, 18)))
    waiting.start()
    time.sleep(1.0)
    assert chaos.replace_dead() == 3
    waiting.join(60)
    assert answers == [expected[18]]
    _assert_clean(chaos)


def _resources(pid: int) -> tuple[int, int]:
    """Python threads and open file descriptors of a process.

    Threads named after the process are Python's (grpc's event-engine and DataFusion's
    tokio threads carry their own names, and grpc sizes its pool to the load)."""
    command = Path(f"/proc/{pid}/comm").read_text()
    threads = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            threads += (task / "comm").read_text() == command
        except FileNotFoundError:
            continue  # the thread ended meanwhile
    return threads, len(list(Path(f"/proc/{pid}/fd").iterdir()))
