"""The Airflow pool of the trainer containers (``train`` and ``evaluate``).

One pool, ``GROUNDING_OPS_GPU_POOL`` (default ``grounding_gpu``, read when the DAG files are parsed),
with as many slots as the Docker hosts have GPUs to share between concurrent trainings and GPU
evaluations. Airflow picks a task's pool when the DAG is parsed, before the form chooses the engine,
so cpu-engine runs take slots of the same pool. The local services create it with
``GROUNDING_OPS_GPU_POOL_SLOTS`` slots (default 2); elsewhere create it once:
``airflow pools set grounding_gpu <slots> "GPU trainer containers"``.
"""

from __future__ import annotations

import os

GPU_POOL_ENV = "GROUNDING_OPS_GPU_POOL"
GPU_POOL_SLOTS_ENV = "GROUNDING_OPS_GPU_POOL_SLOTS"
DEFAULT_GPU_POOL = "grounding_gpu"


def gpu_pool() -> str:
    return (os.environ.get(GPU_POOL_ENV) or DEFAULT_GPU_POOL).strip()
