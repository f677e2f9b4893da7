"""GRPO makes a better model: a shortened tiny-cpu-grpo run beats its own warm-started base.

The shortened twin of ``benchmarks/grpo_gain.py``, in process: the synthetic shapes set
published by the real code, ``run_training`` with the CPU engine (a partial supervised warm-up,
then GRPO on the IoU reward), and the evaluation of ``OUTPUT/base`` (the warm-started model GRPO
starts from) and of ``OUTPUT/final`` on the held-out split. The final model's mean IoU interval
must lie wholly above the base's. A GRPO that learns nothing (the constant-reward control, zero
advantages, or a policy update that never reaches the weights) leaves final equal to base, and
this fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from grounding_ops.data.synthetic import publish_synthetic_version
from grounding_ops.evaluation.evaluate import evaluate
from grounding_ops.training.presets import get_preset
from grounding_ops.training.runner import run_training

pytestmark = [pytest.mark.ml, pytest.mark.slow]

IMAGES = 700
VAL_FRACTION = 0.25  # ~240 held-out samples
# The recipe, shortened: a warm-up that teaches the answer format and the boxes' prior but not
# yet where the shapes are, and fewer GRPO steps.
OVERRIDES = ["sft_warmup_steps=500", "total_steps=120", "save_freq=-1"]


def _mean_iou(model: Path, dataset: str, out: Path, role: str):
    result = evaluate(str(model), dataset, split="val", output_uri=str(out), role=role)
    return result.metrics.overall.mean_iou, result.n_samples


def test_grpo_beats_its_warm_started_base(tmp_path: Path) -> None:
    dataset, counts = publish_synthetic_version(
        tmp_path / "data", version="v-gain", n_images=IMAGES, seed=3, val_fraction=VAL_FRACTION
    )
    spec = get_preset("tiny-cpu-grpo").with_overrides(OVERRIDES)
    output = tmp_path / "run"
    assert run_training(spec, dataset_uri=dataset, output_uri=str(output), engine="cpu") == 0

    base, n = _mean_iou(output / "base", dataset, tmp_path / "eval-base", "base")
    final, _ = _mean_iou(output / "final", dataset, tmp_path / "eval-final", "candidate")
    summary = (
        f"mean IoU on {n} held-out samples: base {base.value:.3f} [{base.ci_low:.3f}, {base.ci_high:.3f}], "
        f"final {final.value:.3f} [{final.ci_low:.3f}, {final.ci_high:.3f}]"
    )
    print(summary)
    assert n == counts["val"] and n >= 200, counts
    assert final.ci_low > base.ci_high, summary
