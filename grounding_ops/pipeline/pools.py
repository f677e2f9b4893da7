"""The Airflow pool of the trainer containers (``train`` and ``evaluate``).

One pool, ``GROUNDING_OPS_GPU_POOL`` (default ``grounding_gpu``, read when the DAG files are parsed),
with as many slots as the Docker hosts have GPUs to share between concurrent trainings and GPU
evaluations. Airflow picks a task's pool when the DAG is parsed, before the form chooses the engine,
so cpu-engine runs take slots of the same pool. The local services create it with
``GROUNDING_OPS_GPU_POOL_SLOTS`` slots (default 1: a GPU node runs one trainer container at a time,
since vLLM takes most of its GPU's memory); elsewhere create it once:
``airflow pools set grounding_gpu <slots> "GPU trainer containers"``.
"""

from __future__ import annotations

import os

GPU_POOL_ENV = "GROUNDING_OPS_GPU_POOL"
GPU_POOL_SLOTS_ENV = "GROUNDING_OPS_GPU_POOL_SLOTS"
DEFAULT_GPU_POOL = "grounding_gpu"
DEFAULT_GPU_POOL_SLOTS = 1


def gpu_pool() -> str:
    return (os.environ.get(GPU_POOL_ENV) or DEFAULT_GPU_POOL).strip()


def gpu_pool_slots() -> int:
    raw = (os.environ.get(GPU_POOL_SLOTS_ENV) or str(DEFAULT_GPU_POOL_SLOTS)).strip()
    try:
        slots = int(raw)
    except ValueError:
        raise ValueError(f"{GPU_POOL_SLOTS_ENV}={raw!r} is not a whole number of slots") from None
    if slots < 1:
        raise ValueError(f"{GPU_POOL_SLOTS_ENV}={slots}: the pool needs at least one slot")
    return slots
