"""The evaluation report at real sample counts, on degenerate IoU distributions."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from grounding_ops.evaluation.metrics import compute_metrics
from grounding_ops.evaluation.report import iou_histogram_png, render_report

N = 5000
BAR = (70, 110, 200)

DISTRIBUTIONS = {
    "all zero": np.zeros(N),
    "all one": np.ones(N),
    "one outlier": np.concatenate([np.zeros(N - 1), [1.0]]),
    "skewed": np.concatenate([np.zeros(N - 3), [0.35, 0.55, 0.95]]),
    "uniform": np.linspace(0.0, 1.0, N),
}


def _bars(png_b64: str) -> int:
    """Number of bars (runs of pixel columns holding the bar colour) in the histogram image."""
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(png_b64))).convert("RGB"))
    columns = np.all(pixels == BAR, axis=2).any(axis=0).astype(int)
    return int(np.count_nonzero(np.diff(np.concatenate([[0], columns])) == 1))


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_report_renders_5000_samples(name: str) -> None:
    ious = DISTRIBUTIONS[name]
    metrics = compute_metrics(ious, ious, np.ones(N, dtype=bool), n_resamples=200)
    page = render_report(title=f"report {name}", info={"samples": N}, metrics=metrics, ious=ious.tolist(), examples=[])
    assert "IoU histogram" in page and f"{metrics.overall.n}" in page


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_every_nonempty_bin_is_drawn(name: str) -> None:
    """A bin with 1 sample next to a bin with 4,999 still shows a bar (at least one pixel high)."""
    ious = DISTRIBUTIONS[name]
    counts, _ = np.histogram(ious, bins=10, range=(0.0, 1.0))
    png = iou_histogram_png(ious.tolist())
    assert _bars(png) == int((counts > 0).sum())


def test_empty_histogram_draws_axes_only() -> None:
    assert _bars(iou_histogram_png([])) == 0
