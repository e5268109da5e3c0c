"""The benchmark harness runs end to end at a tiny scale, every answer checked.

Timings are not asserted here (they belong to `python -m bench`, see bench/README.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=600)


def test_tpch_harness_checks_every_column_against_duckdb(demo_warehouse: Path,
                                                         tmp_path: Path) -> None:
    done = _bench("tpch", "--scale", "0.01", "--queries", "1,3", "--runs", "1",
                  "--warehouse", str(demo_warehouse), "--json", str(tmp_path / "t.json"),
                  "--plot", str(tmp_path / "t.png"))
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| 1 |", "| 3 |"))]
    assert len(rows) == 2 and all(row.endswith("| ok |") for row in rows), done.stdout
    assert "single-node/embedded" in done.stdout and "Ballista: not run" in done.stdout
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_latency_harness_runs_against_krishiv_and_the_stub() -> None:
    done = _bench("latency", "--runs", "20", "--warmup", "5")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ADBC SELECT 1, new cursor per run |" in done.stdout
    assert "against a do-nothing Flight SQL stub" in done.stdout
    assert "against the same stub on Krishiv's transport" in done.stdout
    split = [line for line in done.stdout.splitlines()
             if line.startswith("| ADBC SELECT 1, one cursor reused | ")]
    assert len(split) == 2 and len(split[1].split("|")) == 7, done.stdout


def test_streaming_harness_fetches_from_each_server() -> None:
    """Every fetch's row count is checked by the harness, which exits non-zero otherwise."""
    done = _bench("streaming", "--rows", "100000", "--runs", "1", "--warmup", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    runs = [line for line in done.stdout.splitlines()
            if line.startswith(("| krishiv |", "| uncached |", "| bare |", "| files |"))]
    assert len(runs) == 4, done.stdout


def test_krishiv_bench_runs_the_harness_from_any_folder(tmp_path: Path) -> None:
    """`krishiv bench NAME` is `python -m bench NAME`, wherever it is started from."""
    krishiv = Path(sys.executable).with_name("krishiv")
    done = subprocess.run([str(krishiv), "bench", "latency", "--runs", "5", "--warmup", "1"],
                          cwd=tmp_path, text=True, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ADBC SELECT 1, one cursor reused |" in done.stdout
    listed = subprocess.run([str(krishiv), "bench"], cwd=tmp_path, text=True,
                            capture_output=True, timeout=60)
    assert listed.returncode != 0 and "tpch" in listed.stderr


def test_krishiv_bench_finds_the_checkout_it_is_started_in(tmp_path: Path) -> None:
    """A non-editable install (`pip install '.[dev]'`) runs the benchmarks of the checkout
    `krishiv bench` is started in, or below; any other folder has none."""
    from flight_server.cli import bench_checkout

    site_packages = tmp_path / "site-packages"
    site_packages.mkdir()
    assert bench_checkout(site_packages, REPO) == REPO
    assert bench_checkout(site_packages, REPO / "bench") == REPO
    assert bench_checkout(site_packages, tmp_path) is None
    impostor = tmp_path / "other"
    (impostor / "bench").mkdir(parents=True)
    (impostor / "bench" / "__main__.py").write_text("")
    (impostor / "pyproject.toml").write_text('[project]\nname = "other"\n')
    assert bench_checkout(site_packages, impostor) is None
    assert bench_checkout(REPO, impostor) == REPO


def test_a_missing_test_tool_is_named_not_a_traceback() -> None:
    """Without the dev extras the harness says what to install."""
    blocked = ("import sys; sys.modules['adbc_driver_flightsql'] = None; "
               "sys.modules['adbc_driver_flightsql.dbapi'] = None; "
               "from bench.__main__ import run; run(['latency', '--runs', '1'])")
    done = subprocess.run([sys.executable, "-c", blocked], cwd=REPO, text=True,
                          capture_output=True, timeout=120)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr
    assert "adbc_driver_flightsql" in done.stderr and "pip install '.[dev]'" in done.stderr
