"""Does GRPO make a better model? Base vs final mean IoU of the tiny-cpu-grpo recipe, and a control.

Runs the recipe end to end through the command line, as a user would: ``synthetic-data`` ->
``prepare`` (platform environment: Great Expectations) -> ``train --engine cpu --preset
tiny-cpu-grpo`` -> ``evaluate`` of the warm-started base model (``OUTPUT/base``) and of the final
model (``OUTPUT/final``) on the held-out ``val`` split. Then the same training with
``--set reward_function=constant`` (every rollout scores the same, so every advantage is
zero): the control, which must not gain. Prints, per run, base and final mean IoU with their
95% bootstrap intervals, the gain, whether the intervals are apart, the training seconds and
the peak RSS of the training processes.

    .venv-ml/bin/python benchmarks/grpo_gain.py [--images 2000] [--steps N] [--set KEY=VALUE] [--skip-control]

About 20 minutes on 2 cores: two trainings of about 7 minutes and four evaluations.

Needs both environments (``make setup``); started with another Python it re-runs itself with
``.venv-ml/bin/python``. The platform environment's Python is ``.venv/bin/python`` or
``--platform-python``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _ml_env import REPO, ensure_ml_python

# Runs a command and prints the peak RSS (KiB) of it and its descendants on its last stderr line.
_PEAK_RSS = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[1:]).returncode\n"
    "print(f'peak_rss_kib={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', file=sys.stderr)\n"
    "sys.exit(code)\n"
)


@dataclass(frozen=True)
class Score:
    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


@dataclass(frozen=True)
class Outcome:
    name: str
    base: Score
    final: Score
    train_seconds: float  # the engine: warm-up and GRPO
    grpo_seconds: float
    peak_rss_mib: float

    @property
    def gain(self) -> float:
        return self.final.mean - self.base.mean

    @property
    def apart(self) -> bool:
        """The final model's interval lies wholly above the base model's."""
        return self.final.low > self.base.high


def _cli(python: str, log: Path, *args: str, peak_rss: bool = False) -> float | None:
    """Run ``python -m grounding_ops ARGS`` from this checkout, output to ``log``; the peak RSS in MiB."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    command = [python, "-m", "grounding_ops", *args]
    if peak_rss:
        command = [python, "-c", _PEAK_RSS, *command]
    with open(log, "w") as handle:
        code = subprocess.run(
            command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False
        ).returncode
    text = log.read_text()
    if code != 0:
        sys.stderr.write(text[-6000:])
        raise SystemExit(f"`grounding-ops {args[0]}` failed with exit code {code} (log: {log})")
    if not peak_rss:
        return None
    last = [line for line in text.splitlines() if line.startswith("peak_rss_kib=")][-1]
    return int(last.split("=", 1)[1]) / 1024


def _score(python: str, model: Path, dataset: str, out: Path, role: str) -> Score:
    _cli(
        python,
        out.with_suffix(".log"),
        "evaluate",
        "--model",
        str(model),
        "--dataset",
        dataset,
        "--split",
        "val",
        "--role",
        role,
        "--output",
        str(out),
        "--no-mlflow",
    )
    from grounding_ops.evaluation.evaluation_record import EvaluationRecord
    from grounding_ops.storage import open_store

    overall = EvaluationRecord.load(open_store(str(out))).metrics["overall"]
    iou = overall["mean_iou"]
    return Score(iou["value"], iou["ci_low"], iou["ci_high"], int(overall["n"]))


def best_fixed_box_iou(val_parquet: Path, grid: int = 28) -> float:
    """Mean IoU of the best single box (on a grid of ``grid`` steps per side) given to every sample.

    What a model that ignores the image can reach at most: the bar for "grounding, not a prior".
    """
    import numpy as np
    import pyarrow.parquet as pq

    rows = pq.read_table(val_parquet, columns=["reward_model"]).column("reward_model").to_pylist()
    truths = [r["ground_truth"] if isinstance(r["ground_truth"], dict) else json.loads(r["ground_truth"]) for r in rows]
    boxes = np.array([t["boxes"][0] for t in truths], dtype=float)
    sizes = np.array([t["image_size"] for t in truths], dtype=float)
    g = boxes / np.concatenate([sizes, sizes], axis=1)  # normalized xyxy
    ticks = np.linspace(0.0, 1.0, grid + 1)
    pairs = np.array([(a, b) for i, a in enumerate(ticks) for b in ticks[i + 1 :]])

    def overlap(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:  # pairs x samples
        return np.clip(np.minimum(pairs[:, 1:2], hi[None]) - np.maximum(pairs[:, 0:1], lo[None]), 0.0, None)

    ix, iy = overlap(g[:, 0], g[:, 2]), overlap(g[:, 1], g[:, 3])
    widths, heights = pairs[:, 1] - pairs[:, 0], pairs[:, 1] - pairs[:, 0]
    areas = (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
    best = 0.0
    for a in range(len(pairs)):
        inter = ix[a][None, :] * iy  # y-pairs x samples
        union = widths[a] * heights[:, None] + areas[None, :] - inter
        best = max(best, float((inter / union).mean(axis=1).max()))
    return best


def _train_and_score(name: str, python: str, dataset: str, work: Path, sets: list[str]) -> Outcome:
    out = work / name
    overrides = [item for pair in (("--set", s) for s in sets) for item in pair]
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    rss = _cli(
        python,
        out / "train.log",
        "train",
        "--engine",
        "cpu",
        "--preset",
        "tiny-cpu-grpo",
        "--dataset",
        dataset,
        "--output",
        str(out / "run"),
        *overrides,
        peak_rss=True,
    )
    seconds = time.perf_counter() - started
    from grounding_ops.storage import open_store
    from grounding_ops.training.run_record import RunRecord

    run = RunRecord.load(open_store(str(out / "run")))
    train_seconds = float(run.timings.get("engine_s") or seconds)
    grpo_seconds = float(run.seconds_per_step or 0.0) * run.steps_trained
    base = _score(python, out / "run" / "base", dataset, out / "eval-base", "base")
    final = _score(python, out / "run" / "final", dataset, out / "eval-final", "candidate")
    return Outcome(name, base, final, train_seconds, grpo_seconds, rss or 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="synthetic images (default 2000)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="held-out share (default 0.2)")
    parser.add_argument("--steps", type=int, default=None, help="GRPO steps (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic images")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset value (repeatable)"
    )
    parser.add_argument("--skip-control", action="store_true", help="do not run the constant-reward control")
    parser.add_argument(
        "--platform-python",
        default=str(REPO / ".venv" / "bin" / "python"),
        help="Python of the platform environment, for prepare (default .venv/bin/python)",
    )
    parser.add_argument("--keep", default=None, help="keep the work files in this folder")
    args = parser.parse_args()
    ensure_ml_python()
    ml_python = sys.executable
    if not Path(args.platform_python).exists():
        sys.exit(
            f"no platform environment at {args.platform_python}: run `make setup-platform` or pass --platform-python"
        )
    from grounding_ops.tiny_models import MAX_PIXELS, MIN_PIXELS

    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        _cli(
            ml_python,
            work / "synthetic-data.log",
            "synthetic-data",
            "--output",
            str(work / "syn"),
            "--images",
            str(args.images),
            "--seed",
            str(args.seed),
        )
        _cli(
            args.platform_python,
            work / "prepare.log",
            "prepare",
            str(work / "syn" / "annotations.jsonl"),
            "--images-root",
            str(work / "syn"),
            "--output",
            str(work / "dataset"),
            "--protocol",
            "qwen2.5-vl",
            "--val-fraction",
            str(args.val_fraction),
            "--min-pixels",
            str(MIN_PIXELS),
            "--max-pixels",
            str(MAX_PIXELS),
        )
        dataset = str(work / "dataset")
        sets = [*args.set, *([f"total_steps={args.steps}"] if args.steps else [])]
        version = json.loads((work / "dataset" / "latest.json").read_text())["version"]
        fixed_box = best_fixed_box_iou(work / "dataset" / version / "val.parquet")
        runs = [_train_and_score("grpo", ml_python, dataset, work, sets)]
        if not args.skip_control:
            runs.append(_train_and_score("control", ml_python, dataset, work, [*sets, "reward_function=constant"]))

    print(
        f"tiny-cpu-grpo recipe on {args.images} synthetic images, mean IoU on {runs[0].base.n} held-out samples "
        "(95% bootstrap intervals); train s = warm-up + GRPO, peak RSS of the training processes"
    )
    print(
        f"{'run':24s} {'base':>22s} {'final':>22s} {'gain':>7s} {'apart':>6s} {'train s':>8s} {'(GRPO)':>7s} "
        f"{'peak RSS':>9s}"
    )
    print(f"{'best fixed box':24s} {fixed_box:>22.3f}   (one box for every sample: what ignoring the image reaches)")
    for run in runs:
        label = "GRPO, IoU reward" if run.name == "grpo" else "control, constant reward"
        print(
            f"{label:24s} {str(run.base):>22s} {str(run.final):>22s} {run.gain:+7.3f} "
            f"{'yes' if run.apart else 'no':>6s} {run.train_seconds:8.0f} {run.grpo_seconds:7.0f} {run.peak_rss_mib:6.0f} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
