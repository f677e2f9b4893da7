from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Airflow reads its configuration when first imported: give the test session its own
# AIRFLOW_HOME and SQLite metadata DB before any test module imports airflow.
_REPO = Path(__file__).resolve().parent.parent
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="airflow-test-home-"))
os.environ.setdefault("AIRFLOW_HOME", str(_AIRFLOW_HOME))
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(_REPO / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(_REPO / "plugins"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__UNIT_TEST_MODE", "False")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest  # noqa: E402

pytest_plugins = ["grounding_ops.testing"]

# Tests that need torch/transformers/verl run in the ML environment: `make test` runs them
# with `pytest -c tests/ml/pytest.ini tests/ml`.
collect_ignore = ["ml"]


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """An initialised Airflow metadata DB for in-process ``dag.test()`` runs."""
    import subprocess
    import sys

    airflow = Path(sys.executable).parent / "airflow"
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=dict(os.environ), timeout=600)
    return Path(os.environ["AIRFLOW_HOME"])
