"""Shuffle files: deterministic hash partitions, validated tickets, served over Flight."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight
import pytest

from engine.distributed.ids import Attempt, JobId, StageId
from engine.distributed.shuffle import (
    BadShuffleKey,
    ShuffleKey,
    partition_ids,
    split_by_partition,
    sweep_work_dir,
    write_map_output,
)
from tests.flight_raw import bearer
from tests.servers import RunningServer, start_executor

TOKEN = "executor-token"
JOB = JobId(str(uuid.uuid4()))


def _rows(n: int) -> pa.RecordBatch:
    keys = pa.array([i % 97 for i in range(n)], pa.int64())
    return pa.record_batch([keys, pc.cast(pa.array(range(n)), pa.string())], names=["k", "v"])


def _key(partition: int = 0, map_task: int = 0) -> ShuffleKey:
    return ShuffleKey(JOB, StageId(1), Attempt(0), partition, map_task, Attempt(0))


@pytest.fixture(scope="module")
def executor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("executor")
    running = start_executor(root / "work", root, TOKEN)
    yield running
    running.stop()


def _work_dir(executor: RunningServer) -> Path:
    return Path(executor.log_path).parent / "work"


def test_sweep_removes_only_idle_job_folders(tmp_path: Path) -> None:
    old_job, new_job = tmp_path / str(uuid.uuid4()), tmp_path / str(uuid.uuid4())
    for folder in (old_job, new_job, tmp_path / "not-a-job"):
        (folder / "1.0" / "0").mkdir(parents=True)
    os.utime(old_job, (1000.0, 1000.0))
    assert sweep_work_dir(tmp_path, 3600.0, time.time()) == [old_job.name]
    assert new_job.exists() and (tmp_path / "not-a-job").exists()
    assert sweep_work_dir(tmp_path, 0.0, time.time()) == [new_job.name]
    assert [p.name for p in tmp_path.iterdir()] == ["not-a-job"]


def test_partition_ids_follow_row_order() -> None:
    """Each row's id is the one it gets alone: a large batch is not reordered (with
    several DataFusion partitions it was, and join rows went to the wrong reducers)."""
    batch = _rows(200_000)
    ids = partition_ids(batch, ["k"], 8).tolist()
    for row in (0, 1, 96, 12_345, 199_999):
        assert ids[row] == partition_ids(batch.slice(row, 1), ["k"], 8).tolist()[0]
    by_key: dict[int, set[int]] = {}
    for key, partition in zip(batch.column(0).to_pylist(), ids, strict=True):
        by_key.setdefault(key, set()).add(partition)
    assert all(len(partitions) == 1 for partitions in by_key.values())


def test_partitions_are_the_same_in_another_process() -> None:
    batch = _rows(1000)
    here = partition_ids(batch, ["k"], 8).tolist()
    script = ("import sys, json, pyarrow as pa, pyarrow.compute as pc\n"
              "from engine.distributed.shuffle import partition_ids\n"
              "keys = pa.array([i % 97 for i in range(1000)], pa.int64())\n"
              "b = pa.record_batch([keys, pc.cast(pa.array(range(1000)), pa.string())], "
              "names=['k', 'v'])\n"
              "print(json.dumps(partition_ids(b, ['k'], 8).tolist()))\n")
    there = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=True).stdout
    assert json.loads(there) == here
    assert set(here) == set(range(8))
    by_key: dict[int, set[int]] = {}
    for key, partition in zip(batch.column("k").to_pylist(), here, strict=True):
        by_key.setdefault(key, set()).add(partition)
    assert all(len(p) == 1 for p in by_key.values())


@pytest.mark.parametrize(
    "fields",
    [
        {"job": "../../etc", "stage": 1, "stage_attempt": 0, "partition": 0, "map_task": 0,
         "attempt": 0},
        {"job": str(uuid.uuid4()).upper(), "stage": 1, "stage_attempt": 0, "partition": 0,
         "map_task": 0, "attempt": 0},
        {"job": str(uuid.uuid4()), "stage": -1, "stage_attempt": 0, "partition": 0,
         "map_task": 0, "attempt": 0},
        {"job": str(uuid.uuid4()), "stage": "1", "stage_attempt": 0, "partition": 0,
         "map_task": 0, "attempt": 0},
        {"job": str(uuid.uuid4()), "stage": 1, "stage_attempt": 0, "partition": 0,
         "map_task": 0, "attempt": 0, "path": "/etc/passwd"},
    ],
)
def test_bad_tickets_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(BadShuffleKey):
        ShuffleKey.from_ticket(json.dumps({"v": 1, **fields}).encode())
    with pytest.raises(BadShuffleKey):
        ShuffleKey.from_ticket(b"\xff not json")
    with pytest.raises(BadShuffleKey):
        ShuffleKey.from_ticket(b"[" * 500 + b"]" * 500)  # deep nesting


def test_map_output_is_served_over_flight(executor: RunningServer) -> None:
    batches = [_rows(5000), _rows(3000)]
    counts = write_map_output(_work_dir(executor), _key(map_task=3), batches,
                              batches[0].schema, ["k"], 4)
    assert sum(counts.values()) == 8000
    client = flight.connect(executor.uri)
    parts = []
    for partition in range(4):
        ticket = flight.Ticket(_key(partition, map_task=3).ticket())
        table = client.do_get(ticket, bearer(TOKEN)).read_all()
        assert table.num_rows == counts[partition]
        parts.append(table)
    client.close()
    keys_by_partition = [set(t.column("k").to_pylist()) for t in parts]
    for i, keys in enumerate(keys_by_partition):  # a key lives in exactly one partition
        for other in keys_by_partition[i + 1:]:
            assert not keys & other
    combined = pa.concat_tables(parts).sort_by("v")
    expected = pa.Table.from_batches(batches).sort_by("v")
    assert combined.equals(expected)


def test_executor_errors_are_typed(executor: RunningServer) -> None:
    client = flight.connect(executor.uri)
    with pytest.raises(flight.FlightUnauthenticatedError):
        client.do_get(flight.Ticket(_key().ticket())).read_all()
    with pytest.raises(pa.ArrowInvalid, match="bad shuffle ticket"):
        client.do_get(flight.Ticket(b'{"v": 1, "job": "../x"}'), bearer(TOKEN)).read_all()
    missing = ShuffleKey(JobId(str(uuid.uuid4())), StageId(9), Attempt(0), 0, 0, Attempt(0))
    with pytest.raises(KeyError, match="no shuffle output"):
        client.do_get(flight.Ticket(missing.ticket()), bearer(TOKEN)).read_all()
    client.close()


def test_executor_needs_a_token_or_insecure(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="KRISHIV_EXECUTOR_TASK_BEARER_TOKEN"):
        start_executor(tmp_path / "work", tmp_path, None)
    running = start_executor(tmp_path / "work", tmp_path, None, ["--insecure"])
    running.stop()


def test_split_by_partition_keeps_each_partitions_rows_in_order() -> None:
    batch = pa.record_batch({"k": list(range(1000)), "v": [str(i) for i in range(1000)]})
    ids = partition_ids(batch, ["k"], 5)
    pieces = split_by_partition(batch, ids, 5)
    assert len(pieces) == 5
    for partition, piece in enumerate(pieces):
        expected = batch.filter(pa.array(ids == partition))
        assert piece.to_pylist() == expected.to_pylist()
    assert sum(piece.num_rows for piece in pieces) == 1000


def test_integer_keys_with_nulls_hash_by_value() -> None:
    """Integer-like keys (numpy mixing): equal key tuples, nulls included, share a
    partition wherever they occur, and rows spread over every partition."""
    first = pa.array([i % 50 if i % 7 else None for i in range(20_000)], pa.int64())
    second = pa.array([i % 3 for i in range(20_000)], pa.int32())
    batch = pa.record_batch([first, second, pa.array(range(20_000))], names=["a", "b", "v"])
    ids = partition_ids(batch, ["a", "b"], 6).tolist()
    by_key: dict[tuple[int | None, int], set[int]] = {}
    for a, b, partition in zip(first.to_pylist(), second.to_pylist(), ids, strict=True):
        by_key.setdefault((a, b), set()).add(partition)
    assert all(len(p) == 1 for p in by_key.values())
    assert set(ids) == set(range(6))
    # The same tuples in another batch (reversed) land in the same partitions.
    reversed_ids = partition_ids(batch.take(pa.array(range(19_999, -1, -1))), ["a", "b"], 6)
    assert reversed_ids.tolist() == ids[::-1]
    dates = pa.record_batch([pc.cast(pa.array([10, 20, 10]), pa.int32()).cast(pa.date32())],
                            names=["d"])
    date_ids = partition_ids(dates, ["d"], 4).tolist()
    assert date_ids[0] == date_ids[2]


@pytest.mark.parametrize("partitions", [2, 3, 4, 8])
def test_integer_keys_spread_evenly(partitions: int) -> None:
    """Keys in runs of 8 every 32 (TPC-H order keys) and plain multiples of 64 each
    fill every partition to within 3% of an even share."""
    for keys in ([run * 32 + i for run in range(12_500) for i in range(8)],
                 [i * 64 for i in range(100_000)]):
        batch = pa.record_batch([pa.array(keys, pa.int64())], names=["k"])
        counts = np.bincount(partition_ids(batch, ["k"], partitions), minlength=partitions)
        share = len(keys) / partitions
        assert max(abs(count - share) for count in counts) < 0.03 * share
