"""GRPO makes a better model: a shortened tiny-cpu recipe, base vs final on held-out samples.

The full-length figures (and the constant-reward control) come from benchmarks/grpo_gain.py;
this is its shortened twin: a published synthetic dataset, ``run_training`` with the tiny-cpu
preset (fewer warm-up and GRPO steps), and an evaluation of the warm-started base model and of
the final model on the val split. The final model's mean IoU must beat the base's with the 95%
bootstrap intervals apart.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grounding_ops.data.synthetic import publish_synthetic_version
from grounding_ops.evaluation.evaluate import evaluate
from grounding_ops.training.presets import get_preset
from grounding_ops.training.runner import run_training

pytestmark = [pytest.mark.ml, pytest.mark.slow]

N_IMAGES = 300  # ~450 records, ~180 of them held out
# The preset's warm-up (the GRPO start must be past the fixed-box plateau), fewer GRPO steps.
SHORTENED = ["total_steps=40", "save_freq=-1"]


def test_grpo_beats_its_warm_started_base(tmp_path: Path) -> None:
    dataset, counts = publish_synthetic_version(tmp_path / "data", version="v-gain", n_images=N_IMAGES, seed=3,
                                                val_fraction=0.4)
    assert counts["val"] >= 150, counts
    out = tmp_path / "run"
    spec = get_preset("tiny-cpu").with_overrides(SHORTENED)
    assert run_training(spec, dataset_uri=dataset, output_uri=str(out), engine="cpu") == 0
    run = json.loads((out / "run.json").read_text())
    assert run["base_model_uri"].endswith("/base")

    scores = {}
    for name in ("base", "final"):
        result = evaluate(str(out / name), dataset, split="val", output_uri=str(tmp_path / f"eval-{name}"),
                          role="base" if name == "base" else "candidate", max_new_tokens=spec.max_response_length)
        scores[name] = result.metrics.overall.mean_iou
    base, final = scores["base"], scores["final"]
    summary = f"base {base.value:.3f} [{base.ci_low:.3f}, {base.ci_high:.3f}], final {final.value:.3f} " \
              f"[{final.ci_low:.3f}, {final.ci_high:.3f}]"
    assert final.ci_low > base.ci_high, summary
