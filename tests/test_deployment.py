"""Deployment wiring: executor queues of the GPU tasks and the Docker daemon a container runs on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GPU_TASKS = {"train", "evaluate"}


def _queues(env_queue: str | None) -> dict[str, str]:
    """Task id -> queue of grounding_train, parsed by a fresh DagBag with GROUNDING_OPS_GPU_QUEUE set."""
    env = dict(os.environ)
    env.pop("GROUNDING_OPS_GPU_QUEUE", None)
    if env_queue is not None:
        env["GROUNDING_OPS_GPU_QUEUE"] = env_queue
    code = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(REPO / 'dags' / 'grounding_train.py')!r})\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "dag = bag.dags['grounding_train']\n"
        "print(json.dumps({t.task_id: [t.queue, t.doc_md or ''] for t in dag.tasks}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    tasks = json.loads(result.stdout.strip().splitlines()[-1])
    for task_id in GPU_TASKS:
        assert f"queue `{tasks[task_id][0]}`" in tasks[task_id][1], "the task's docs name its queue"
    return {task_id: queue for task_id, (queue, _) in tasks.items()}


def test_gpu_tasks_go_to_the_gpu_queue_and_the_rest_to_the_default_queue():
    from airflow.configuration import conf

    default = conf.get("operators", "default_queue")
    queues = _queues(None)
    assert GPU_TASKS <= set(queues)
    assert {t: q for t, q in queues.items() if t in GPU_TASKS} == {"train": "gpu", "evaluate": "gpu"}
    assert {q for t, q in queues.items() if t not in GPU_TASKS} == {default}

    renamed = _queues("a100-nodes")
    assert {renamed[t] for t in GPU_TASKS} == {"a100-nodes"}
    assert {q for t, q in renamed.items() if t not in GPU_TASKS} == {default}


def test_a_bad_gpu_queue_name_is_refused_with_the_variable_named(monkeypatch):
    from grounding_ops.pipeline.docker_tasks import gpu_queue

    monkeypatch.setenv("GROUNDING_OPS_GPU_QUEUE", "gpu nodes")
    with pytest.raises(ValueError, match="GROUNDING_OPS_GPU_QUEUE"):
        gpu_queue()
    monkeypatch.setenv("GROUNDING_OPS_GPU_QUEUE", "")
    assert gpu_queue() == "gpu"
