"""Figures of an evaluation and of a training run (matplotlib, rendered to PNG bytes).

The evaluation report embeds them and the MLflow runs carry them as image artifacts:
the IoU histogram, the Acc@tau curve (tau 0.1 ... 0.9), per-source Acc@0.5 bars with
their confidence intervals, a grid of examples with true (green) and predicted (red)
boxes, and the training curves (reward, IoU, KL, ...) per step.

matplotlib runs with its non-interactive Agg backend; nothing here opens a window.
"""

from __future__ import annotations

import io
import math
from typing import Any, Mapping, Sequence

# file names under which the figures are logged (MLflow artifacts, report sections)
IOU_HISTOGRAM = "iou_histogram.png"
ACC_CURVE = "acc_at_tau.png"
SOURCE_BARS = "per_source.png"
EXAMPLE_GRID = "examples.png"
TRAINING_CURVES = "training_curves.png"
EVALUATION_PLOTS = (IOU_HISTOGRAM, ACC_CURVE, SOURCE_BARS, EXAMPLE_GRID)
TAUS = tuple(round(0.1 * k, 1) for k in range(1, 10))
DPI = 100
TRUE_COLOR = "#00aa00"
PRED_COLOR = "#dc1e1e"
# Training history keys drawn as curves, with their titles (missing or all-empty ones are left out).
TRAINING_CURVE_KEYS = (
    ("reward_mean", "reward mean"),
    ("iou", "IoU"),
    ("acc", "acc"),
    ("kl", "KL"),
    ("entropy", "entropy"),
    ("response_length", "response length (tokens)"),
    ("seconds_per_step", "step seconds"),
    ("tokens_per_s", "tokens/s"),
)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def iou_histogram(ious: Sequence[float], bins: int = 10) -> bytes:
    """Histogram of the per-sample IoU over [0, 1]."""
    plt = _pyplot()
    values = [min(max(float(v), 0.0), 1.0) for v in ious]
    fig, ax = plt.subplots(figsize=(5.0, 3.0))
    ax.hist(values, bins=bins, range=(0.0, 1.0), color="#466ec8", edgecolor="white")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("IoU")
    ax.set_ylabel("samples")
    ax.set_title(f"IoU per sample (n={len(values)})")
    return _png(fig)


def acc_at_tau(ious: Sequence[float], taus: Sequence[float] = TAUS) -> list[tuple[float, float]]:
    """``(tau, share of samples with IoU >= tau)`` for each tau."""
    n = len(ious)
    return [(float(t), (sum(1 for v in ious if float(v) >= t) / n) if n else 0.0) for t in taus]


def acc_curve(ious: Sequence[float], taus: Sequence[float] = TAUS) -> bytes:
    """Acc@tau against tau."""
    plt = _pyplot()
    points = acc_at_tau(ious, taus)
    fig, ax = plt.subplots(figsize=(5.0, 3.0))
    ax.plot([t for t, _ in points], [a for _, a in points], marker="o", color="#466ec8")
    ax.set_xlim(min(taus) - 0.05, max(taus) + 0.05)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("IoU threshold tau")
    ax.set_ylabel("Acc@tau")
    ax.grid(alpha=0.3)
    ax.set_title("Accuracy at IoU threshold")
    return _png(fig)


def source_bars(per_source: Mapping[str, Any], metric: str = "acc_at_0_5", confidence: float = 0.95) -> bytes:
    """``metric`` per source with its confidence interval as error bars.

    ``per_source`` maps a source to its :class:`~grounding_ops.evaluation.metrics.GroupMetrics`.
    """
    plt = _pyplot()
    names = sorted(per_source)
    values = [per_source[s].metric(metric) for s in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2.0), 3.2))
    if names:
        heights = [v.value for v in values]
        errors = [[max(v.value - v.ci_low, 0.0) for v in values], [max(v.ci_high - v.value, 0.0) for v in values]]
        ax.bar(names, heights, yerr=errors, capsize=4, color="#466ec8")
        for i, group in enumerate(per_source[s] for s in names):
            ax.text(i, 0.02, f"n={group.n}", ha="center", va="bottom", color="white", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no sources", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per source ({int(round(confidence * 100))}% CI)")
    ax.tick_params(axis="x", labelrotation=20)
    return _png(fig)


def example_grid(examples: Sequence[Any], columns: int = 4) -> bytes:
    """The examples' images with true (green) and predicted (red) boxes, IoU in the titles.

    ``examples`` are :class:`~grounding_ops.evaluation.report.ReportExample` (image bytes,
    pixel-xyxy boxes of the original image).
    """
    from matplotlib.patches import Rectangle
    from PIL import Image

    plt = _pyplot()
    count = max(len(examples), 1)
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.8 * rows), squeeze=False)
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= len(examples):
            continue
        example = examples[index]
        image = Image.open(io.BytesIO(example.image_bytes)).convert("RGB")
        ax.imshow(image, interpolation="nearest")
        for boxes, color in ((example.gt_boxes, TRUE_COLOR), (example.pred_boxes, PRED_COLOR)):
            for box in boxes:
                x1, y1, x2, y2 = (float(v) for v in box)
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=1.5))
        phrase = example.phrase if len(example.phrase) <= 28 else example.phrase[:27] + "…"
        ax.set_title(f"{phrase}\nIoU {example.iou:.2f}", fontsize=8)
    if not examples:
        axes.flat[0].text(0.5, 0.5, "no examples", ha="center", va="center")
    fig.suptitle("green: true box, red: predicted", fontsize=9)
    return _png(fig)


def evaluation_plots(*, ious: Sequence[float], metrics: Any, examples: Sequence[Any]) -> dict[str, bytes]:
    """The four evaluation figures, by file name (:data:`EVALUATION_PLOTS`)."""
    return {
        IOU_HISTOGRAM: iou_histogram(ious),
        ACC_CURVE: acc_curve(ious),
        SOURCE_BARS: source_bars(metrics.per_source, confidence=metrics.confidence),
        EXAMPLE_GRID: example_grid(examples),
    }


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def training_curves(history: Sequence[Mapping[str, Any]]) -> bytes:
    """One panel per recorded training metric against the step."""
    plt = _pyplot()
    panels = []
    for key, title in TRAINING_CURVE_KEYS:
        points = [(int(h["step"]), _number(h.get(key))) for h in history if "step" in h]
        points = [(s, v) for s, v in points if v is not None]
        if points:
            panels.append((title, points))
    if not panels:
        panels = [("no step metrics recorded", [])]
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.0 * columns, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (title, points) in zip(axes.flat, panels):
        if points:
            ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3, color="#466ec8")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)
