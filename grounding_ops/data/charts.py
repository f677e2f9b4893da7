"""Small SVG bar charts for the dataset report: plain text, no plotting library.

A version's report shows its histograms side by side with the previous version's and the rows
per split and source. Drawn as SVG they are a few kilobytes of text, render crisply in any
browser, diff between versions, and cost microseconds (matplotlib's import and rasterisation cost
about a second of every prepare). Every label from the data is XML-escaped.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Sequence

PANEL_WIDTH = 380
PANEL_HEIGHT = 230
COLUMNS = 4
# top, right, bottom, left margins inside a panel: title above, tick labels below and left
MARGIN = (26, 10, 58, 44)
THIS_COLOUR = "#3b76af"
PREVIOUS_COLOUR = "#ef8636"
STACK_COLOURS = (
    "#3b76af",
    "#ef8636",
    "#519e3e",
    "#c53932",
    "#8d6ab8",
    "#84584e",
    "#d57fbe",
    "#7f7f7f",
    "#bcbc35",
    "#42b4c5",
    "#1f3d5c",
    "#7a3b16",
)


@dataclass(frozen=True)
class Series:
    """One set of bars: a value per category, drawn in ``colour`` and named in the legend."""

    label: str
    values: Sequence[float]
    colour: str


@dataclass(frozen=True)
class Panel:
    """A chart: grouped bars (one per series, side by side) or, with ``stacked``, one stacked bar
    per category."""

    title: str
    categories: Sequence[str]
    series: Sequence[Series]
    y_label: str = ""
    stacked: bool = False


def _number(value: float) -> str:
    """3 significant digits, whole numbers of 1,000 and more written out (2,000, not 2e+03)."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _panel(panel: Panel, x0: float, y0: float) -> list[str]:
    top, right, bottom, left = MARGIN
    plot_w = PANEL_WIDTH - left - right
    plot_h = PANEL_HEIGHT - top - bottom
    base_y = y0 + top + plot_h
    n = max(1, len(panel.categories))
    if panel.stacked:
        totals = [sum(s.values[i] for s in panel.series) for i in range(len(panel.categories))]
    else:
        totals = [v for s in panel.series for v in s.values]
    high = max([t for t in totals if t == t] + [0.0])
    scale = plot_h / high if high > 0 else 0.0
    out = [
        f'<text x="{x0 + PANEL_WIDTH / 2:.1f}" y="{y0 + 16}" text-anchor="middle" font-size="12">'
        f"{escape(panel.title)}</text>",
        f'<line x1="{x0 + left}" y1="{base_y:.1f}" x2="{x0 + left + plot_w}" y2="{base_y:.1f}" stroke="#444"/>',
        f'<line x1="{x0 + left}" y1="{y0 + top}" x2="{x0 + left}" y2="{base_y:.1f}" stroke="#444"/>',
    ]
    for fraction in (0.5, 1.0):  # two gridlines with their values
        if high <= 0:
            break
        y = base_y - fraction * plot_h
        out.append(
            f'<line x1="{x0 + left}" y1="{y:.1f}" x2="{x0 + left + plot_w}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{x0 + left - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="9">'
            f"{_number(fraction * high)}</text>"
        )
    if panel.y_label:
        cy = y0 + top + plot_h / 2
        out.append(
            f'<text x="{x0 + 10}" y="{cy:.1f}" font-size="9" text-anchor="middle" '
            f'transform="rotate(-90 {x0 + 10} {cy:.1f})">{escape(panel.y_label)}</text>'
        )
    slot = plot_w / n
    groups = 1 if panel.stacked else max(1, len(panel.series))
    bar_w = slot * 0.8 / groups
    for i, category in enumerate(panel.categories):
        slot_x = x0 + left + i * slot
        stacked_top = base_y
        for k, series in enumerate(panel.series):
            value = float(series.values[i])
            if not value > 0:  # nothing (or nothing measurable) to draw: no bar, never a negative one
                continue
            height = value * scale
            if panel.stacked:
                bx, by = slot_x + slot * 0.1, stacked_top - height
                stacked_top = by
            else:
                bx, by = slot_x + slot * 0.1 + k * bar_w, base_y - height
            out.append(
                f'<rect x="{bx:.1f}" y="{by:.1f}" width="{bar_w:.1f}" height="{height:.1f}" fill="{series.colour}">'
                f"<title>{escape(series.label)}, {escape(category)}: {_number(value)}</title></rect>"
            )
        lx, ly = slot_x + slot / 2, base_y + 10
        out.append(
            f'<text x="{lx:.1f}" y="{ly:.1f}" font-size="8" text-anchor="end" '
            f'transform="rotate(-45 {lx:.1f} {ly:.1f})">{escape(category)}</text>'
        )
    for k, series in enumerate(panel.series):  # legend, top right
        ly = y0 + top + 4 + k * 12
        lx = x0 + PANEL_WIDTH - right - 110
        out.append(
            f'<rect x="{lx:.1f}" y="{ly:.1f}" width="8" height="8" fill="{series.colour}"/>'
            f'<text x="{lx + 12:.1f}" y="{ly + 8:.1f}" font-size="9">{escape(series.label[:20])}</text>'
        )
    return out


def grid_svg(panels: Sequence[Panel], columns: int = COLUMNS) -> str:
    """The panels in a grid of ``columns``, as one SVG document."""
    columns = max(1, min(columns, len(panels) or 1))
    rows = (len(panels) + columns - 1) // columns or 1
    width, height = columns * PANEL_WIDTH, rows * PANEL_HEIGHT
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]
    for index, panel in enumerate(panels):
        parts.extend(_panel(panel, (index % columns) * PANEL_WIDTH, (index // columns) * PANEL_HEIGHT))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
