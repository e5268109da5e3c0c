"""flightsql-dbapi and its SQLAlchemy dialect, run as an outside client in its own venv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.servers import RunningServer

ROOT = Path(__file__).resolve().parents[1]
CLIENT_VENV = ROOT / ".venv-clients"
REQUIREMENTS = ["flightsql-dbapi==0.2.2", "sqlalchemy>=1.4,<2", "pandas>=2,<3", "pyarrow>=26"]
SCRIPT = Path(__file__).parent / "clients" / "flightsql_dbapi_client.py"


@pytest.fixture(scope="session")
def client_python() -> Path:
    python = CLIENT_VENV / "bin" / "python"
    stamp = CLIENT_VENV / ".requirements"
    wanted = "\n".join(REQUIREMENTS)
    if not (python.exists() and stamp.exists() and stamp.read_text() == wanted):
        venv.EnvBuilder(with_pip=True, clear=True).create(CLIENT_VENV)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True)
        stamp.write_text(wanted)
    return python


def test_flightsql_dbapi_and_sqlalchemy(server: RunningServer, client_python: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(client_python), str(SCRIPT), str(server.port), "alice", "wonderland"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["plain"] == ["FRANCE", "GERMANY", "ROMANIA", "RUSSIA", "UNITED KINGDOM"]
    assert seen["parameter"] == ["ETHIOPIA"]
    assert seen["description"] == ["n_name"]
    assert seen["sqlalchemy"] == [["AFRICA", 5], ["AMERICA", 5], ["ASIA", 5], ["EUROPE", 5],
                                  ["MIDDLE EAST", 5]]
    assert seen["reflected_columns"] == ["r_regionkey", "r_name", "r_comment"]
    assert seen["orm_select"] == ["ASIA"]
    assert "lineitem" in seen["tables"] and len(seen["tables"]) == 8
    assert {"tpch", "public"} <= set(seen["schemas"])
    assert seen["insert_count"] == [2]
    assert seen["written"] == ["two"]
    assert seen["update_count"] == 1
    assert seen["sa_created"] == 5
    assert seen["tsql_top"] == ["ALGERIA", "ARGENTINA"]
    assert sys.executable != str(client_python)
