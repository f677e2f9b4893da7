"""A small self-contained HTML report of one evaluation (PIL drawings as base64 PNGs)."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from grounding_ops.evaluation.metrics import METRIC_NAMES, GroupMetrics, MetricsReport

TRUE_COLOR = (0, 170, 0)
PRED_COLOR = (220, 30, 30)
EXAMPLE_SIZE = 256  # longest side of the drawn example images


@dataclass(frozen=True)
class ReportExample:
    """One sample to draw: the original image, true and predicted pixel-xyxy boxes."""

    id: str
    source: str
    phrase: str
    image_bytes: bytes
    gt_boxes: Sequence[Sequence[float]]
    pred_boxes: Sequence[Sequence[float]]
    iou: float
    response: str


def _png_b64(image: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def iou_histogram_png(ious: Sequence[float], bins: int = 10, width: int = 420, height: int = 220) -> str:
    """An IoU histogram (``bins`` equal bins over [0, 1]) as a base64 PNG."""
    import numpy as np
    from PIL import Image, ImageDraw

    counts, _ = np.histogram(np.clip(np.asarray(ious, dtype=float), 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 36, width - 10, 14, height - 28
    draw.line([(left, top), (left, bottom), (right, bottom)], fill="black")
    peak = max(int(counts.max()) if counts.size else 0, 1)
    bar_w = (right - left) / bins
    for i, count in enumerate(counts):
        x0 = left + i * bar_w + 2
        x1 = left + (i + 1) * bar_w - 2
        # a non-empty bin is at least one pixel high, however small next to the peak
        y0 = min(bottom - (bottom - top) * (int(count) / peak), bottom - 2)
        if count:
            draw.rectangle([x0, y0, x1, bottom - 1], fill=(70, 110, 200))
            draw.text((x0 + 2, max(y0 - 12, 0)), str(int(count)), fill="black")
    for i in range(0, bins + 1, max(1, bins // 5)):
        x = left + i * bar_w
        draw.text((x - 8, bottom + 6), f"{i / bins:.1f}", fill="black")
    draw.text((4, top), str(peak), fill="black")
    draw.text((right - 24, bottom + 14), "IoU", fill="black")
    return _png_b64(image)


def example_png(example: ReportExample) -> str:
    """The image with true (green) and predicted (red) boxes, as a base64 PNG."""
    from PIL import Image, ImageDraw

    image = Image.open(io.BytesIO(example.image_bytes)).convert("RGB")
    scale = EXAMPLE_SIZE / max(image.size)
    if scale > 1.0:
        # small images are enlarged (nearest neighbour keeps pixels crisp) so boxes are visible
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.NEAREST)
    elif scale < 1.0:
        image = image.resize((round(image.width * scale), round(image.height * scale)))
    draw = ImageDraw.Draw(image)
    for boxes, color in ((example.gt_boxes, TRUE_COLOR), (example.pred_boxes, PRED_COLOR)):
        for box in boxes:
            x1, y1, x2, y2 = (float(v) * scale for v in box)
            draw.rectangle([x1, y1, x2, y2], outline=color, width=2)
    return _png_b64(image)


def _metrics_table(groups: Sequence[tuple[str, GroupMetrics]]) -> str:
    head = "".join(f"<th>{html.escape(name)}</th>" for name in ("group", "n", *METRIC_NAMES))
    rows = []
    for label, group in groups:
        cells = [f"<td>{html.escape(label)}</td>", f"<td>{group.n}</td>"]
        for name in METRIC_NAMES:
            value = group.metric(name)
            cells.append(f"<td>{value.value:.3f} <small>[{value.ci_low:.3f}, {value.ci_high:.3f}]</small></td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _plots_section(plots: Mapping[str, bytes] | None) -> str:
    if not plots:
        return ""
    images = "".join(
        f'<figure style="max-width: none"><img alt="{html.escape(name)}" '
        f'src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}"><figcaption>{html.escape(name)}'
        "</figcaption></figure>"
        for name, data in plots.items()
    )
    return f'<h2>Plots</h2><div class="plots">{images}</div>'


def render_report(
    *,
    title: str,
    info: dict[str, Any],
    metrics: MetricsReport,
    ious: Sequence[float],
    examples: Sequence[ReportExample],
    plots: Mapping[str, bytes] | None = None,
) -> str:
    """The HTML page: run facts, metrics with CIs, IoU histogram, drawn examples.

    ``plots`` (file name -> PNG bytes, see :mod:`grounding_ops.evaluation.plots`) are
    shown in a section of their own.
    """
    facts = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in info.items())
    groups = [("all", metrics.overall), *((f"source: {s}", g) for s, g in sorted(metrics.per_source.items()))]
    figures = []
    for ex in examples:
        caption = (
            f"{html.escape(ex.id)} · {html.escape(ex.source)}<br>“{html.escape(ex.phrase)}” · IoU {ex.iou:.3f}"
            f"<br><code>{html.escape(ex.response[:160])}</code>"
        )
        figures.append(
            f'<figure><img alt="{html.escape(ex.id)}" src="data:image/png;base64,{example_png(ex)}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    pct = int(round(metrics.confidence * 100))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; font-size: 0.9em; }}
figure {{ display: inline-block; margin: 6px; vertical-align: top; max-width: 270px; font-size: 0.8em; }}
code {{ word-break: break-all; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<table>{facts}</table>
<h2>Metrics ({pct}% bootstrap CI, {metrics.n_resamples} resamples)</h2>
{_metrics_table(groups)}
<h2>IoU histogram</h2>
<img alt="IoU histogram" src="data:image/png;base64,{iou_histogram_png(ious)}">
<h2>Examples <small>(green: true box, red: predicted)</small></h2>
{"".join(figures) if figures else "<p>no examples</p>"}
{_plots_section(plots)}
</body></html>
"""
