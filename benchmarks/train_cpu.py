"""CPU engine seconds per step, and the platform's overhead as a fraction of one training run.

Publishes a synthetic dataset version, then runs the container contract (``run_training``
with the ``tiny-cpu`` preset and a tiny Qwen2-VL) into a local output folder, and prints in
one run: the engine's seconds per GRPO step, and each platform phase (dataset fetch and
checksum, model build, checkpoint upload wait, final model upload, and, when the CPU
trainer image is built, a container start) as a fraction of the whole run. Needs the ML
environment; started with another Python it re-runs itself with ``.venv-ml/bin/python``.

    .venv-ml/bin/python benchmarks/train_cpu.py [--steps 10] [--save-freq 5]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _ml_env import ensure_ml_python  # noqa: E402 (benchmarks/ is the script folder)

TRAINER_IMAGE = "grounding-ops/trainer-cpu:latest"


def _publish_dataset(base: Path) -> str:
    from grounding_ops.data.synthetic import publish_synthetic_version

    uri, _ = publish_synthetic_version(base, version="bench", n_images=32, seed=7, val_fraction=0.2)
    return uri


def _container_start_seconds() -> float | None:
    """Seconds for `docker run` of the CPU trainer image to print its version (None: no image)."""
    if shutil.which("docker") is None:
        return None
    probe = subprocess.run(["docker", "image", "inspect", TRAINER_IMAGE], capture_output=True)
    if probe.returncode != 0:
        return None
    started = time.perf_counter()
    run = subprocess.run(
        ["docker", "run", "--rm", "--network", "host", TRAINER_IMAGE, "--version"], capture_output=True, text=True
    )
    if run.returncode != 0:
        return None
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--save-freq", type=int, default=5)
    args = parser.parse_args()
    ensure_ml_python()
    from grounding_ops.training.presets import get_preset
    from grounding_ops.storage import open_store
    from grounding_ops.training.run_record import RunRecord
    from grounding_ops.training.runner import run_training

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        base = Path(tmp)
        dataset = _publish_dataset(base)
        # a short warm-up: this measures GRPO steps and the platform around them (grpo_gain.py runs the recipe)
        spec = get_preset("tiny-cpu").with_overrides(
            [f"total_steps={args.steps}", f"save_freq={args.save_freq}", "sft_warmup_steps=100"]
        )
        started = time.perf_counter()
        code = run_training(spec, dataset_uri=dataset, output_uri=str(base / "out"), engine="cpu")
        wall = time.perf_counter() - started
        if code != 0:
            print(f"training failed with exit code {code}", file=sys.stderr)
            return code
        run = RunRecord.load(open_store(str(base / "out")))
    container = _container_start_seconds()
    timings = run.timings
    total = wall + (container or 0.0)
    per_step = run.seconds_per_step or 0.0
    grpo = per_step * run.steps_trained
    rows = [
        ("GRPO steps (engine)", grpo),
        ("engine start + warm-up + saves", timings["engine_s"] - grpo),
        ("dataset fetch + checksums", timings["dataset_fetch_s"]),
        ("model build/fetch", timings["model_fetch_s"]),
        ("checkpoint download (resume)", timings["checkpoint_download_s"]),
        ("checkpoint upload wait after training", timings["upload_wait_s"]),
        ("final model + upload", timings["final_s"]),
    ]
    if container is not None:
        rows.append(("container start (docker run --version)", container))
    print(
        f"CPU engine: {per_step:.3f} s per GRPO step ({spec.train_batch_size} prompts x {spec.rollout_n} rollouts, "
        f"max {spec.max_response_length} new tokens), {run.steps_trained} steps"
    )
    print(f"{'phase':42s} {'seconds':>8s} {'fraction':>9s}")
    for name, seconds in rows:
        print(f"{name:42s} {seconds:8.2f} {seconds / total:9.1%}")
    platform = sum(s for n, s in rows[2:])
    print(f"{'platform overhead (fetch, upload, container)':42s} {platform:8.2f} {platform / total:9.1%}")
    print(f"{'whole run':42s} {total:8.2f} {1:9.1%}")
    if container is None:
        print(f"(no {TRAINER_IMAGE} image: container start not measured; `make image-trainer-cpu` builds it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
