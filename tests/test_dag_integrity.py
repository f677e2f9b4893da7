"""Every DAG file imports cleanly through Airflow's DagBag and follows the house rules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DAGS_DIR = Path(__file__).resolve().parent.parent / "dags"
DAG_FILES = sorted(p for p in DAGS_DIR.glob("*.py") if not p.name.startswith("_"))
HEAVY_MODULES = ("torch", "verl", "vllm", "transformers", "great_expectations", "mlflow")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_DIR))


def test_dag_files_exist():
    names = {p.stem for p in DAG_FILES}
    assert {"grounding_data", "grounding_train"} <= names


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}, dagbag.import_errors


def test_each_dag_has_owner_tags_retries_and_doc(dagbag):
    assert dagbag.dags, "no DAGs were loaded"
    for dag_id, dag in dagbag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        assert dag.doc_md and dag.doc_md.strip(), f"{dag_id} has no doc_md"
        for task in dag.tasks:
            assert task.owner and task.owner != "airflow", f"{dag_id}.{task.task_id} has no owner"
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_no_heavy_module(dag_file):
    probe = (
        "import json, runpy, sys\n"
        f"runpy.run_path({str(dag_file)!r})\n"
        f"print(json.dumps(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"{dag_file.name} imports {loaded} at module level"


@pytest.mark.parametrize("dag_id", ["grounding_data", "grounding_train"])
def test_forms_have_sections_and_labelled_choices(dag_id: str) -> None:
    from grounding_ops.pipeline import data_params, train_params

    params = (data_params if dag_id == "grounding_data" else train_params).build_params()
    for name, param in params.items():
        schema = param.schema
        assert schema.get("section"), f"{dag_id}.{name} has no section"
        if "enum" in schema and name != "preset":
            display = schema.get("values_display") or {}
            assert set(display) == set(schema["enum"]), f"{dag_id}.{name}: every choice needs a label"
    if dag_id == "grounding_data":
        from grounding_ops.data.readers import FORMATS
        from grounding_ops.protocols import PROTOCOL_NAMES

        assert set(params["format"].schema["values_display"]) == {"auto", *FORMATS}
        assert set(params["protocol"].schema["values_display"]) == set(PROTOCOL_NAMES)


def test_gpu_image_build_context_sends_only_what_the_dockerfile_copies() -> None:
    import re

    root = Path(__file__).resolve().parent.parent
    lines = [
        line.strip()
        for line in (root / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "ignore everything, then allow what the image needs"
    allowed = {line[1:] for line in lines if line.startswith("!")}
    copied = set()
    for line in (root / "docker" / "trainer" / "Dockerfile.verl").read_text().splitlines():
        if re.match(r"^(COPY|ADD)\s", line) and "--from" not in line:
            copied.update(src.rstrip("*") for src in line.split()[1:-1])
    assert copied and copied <= allowed, (copied, allowed)


def test_trainer_containers_share_the_gpu_pool() -> None:
    from airflow.dag_processing.dagbag import DagBag

    from grounding_ops.pipeline.pools import DEFAULT_GPU_POOL

    dag = DagBag(str(Path(__file__).resolve().parent.parent / "dags" / "grounding_train.py")).dags["grounding_train"]
    containers = ("train", "evaluate", "evaluate_test")
    assert {t.task_id: t.pool for t in dag.tasks if t.task_id in containers} == dict.fromkeys(
        containers, DEFAULT_GPU_POOL
    )
    assert all(t.pool == "default_pool" for t in dag.tasks if t.task_id not in containers)
