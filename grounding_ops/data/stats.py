"""Per-version dataset statistics, drift against the previous version, the table-level
acceptance suite, and the version's report.

Statistics are gathered in one pass over the valid rows with their splits (memory: fixed
histograms, and 8 bytes per id to count distinct ids): rows per split and source, boxes
per phrase, box area (share of the image) and aspect ratio, phrase length and image size
histograms over fixed bin edges, so that two versions compare bin by bin. Drift is the
total variation distance between the normalized histograms of this version and the
previous one (0: the same distribution, 1: disjoint), and the change of rows per split.

The acceptance suite (Great Expectations) checks table-level properties of the output, on
one row per split plus one for the whole version: every split that exists has rows, ids are
unique, the means of boxes per phrase and box area are within bounds, no phrase is over the
limit, and (when ``max_drift`` < 1) no histogram drifted more than ``max_drift`` since the
previous version. The row-level suite (grounding_ops.data.validation) keeps feeding the
quarantine; this one decides, with the quarantine share, whether the version is accepted.

``render_report`` writes ``report/index.html`` with the plots (SVG, see
:mod:`grounding_ops.data.charts`) and the comparison with the previous version.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

INF = float("inf")
# name -> (bin edges, axis label); a value v falls in bin i when edges[i] <= v < edges[i+1]
HISTOGRAMS: dict[str, tuple[list[float], str]] = {
    "boxes_per_phrase": ([1, 2, 3, 4, 5, 6, 8, 11, 21, INF], "boxes per phrase"),
    "box_area_fraction": ([0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.2, 0.4, 0.7, 1.0 + 1e-9], "box area / image area"),
    "box_aspect": ([0, 1 / 8, 1 / 4, 1 / 2, 1 / 1.5, 1.5, 2, 4, 8, INF], "box width / height"),
    "phrase_chars": ([0, 8, 16, 32, 64, 128, 256, 512, INF], "phrase length (characters)"),
    "image_width": ([0, 128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096, INF], "image width (pixels)"),
    "image_height": ([0, 128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096, INF], "image height (pixels)"),
}
STATS_DIR = "report"
STATS_FILE = "stats.json"
ACCEPTANCE_SUITE = "grounding_acceptance"


def _count(counts: list[int], name: str, values: Any) -> None:
    """Add ``values`` to histogram ``name``: value v falls in bin i when edges[i] <= v < edges[i+1]
    (below the first edge: bin 0; from the last edge on: the last bin)."""
    import numpy as np

    edges = HISTOGRAMS[name][0]
    bins = np.clip(np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right") - 1, 0, len(edges) - 2)
    for i, n in enumerate(np.bincount(bins, minlength=len(edges) - 1).tolist()):
        counts[i] += n


class _DistinctIds:
    """8 bytes per id (a 64-bit hash); counted once at the end."""

    def __init__(self) -> None:
        self.hashes = bytearray()

    def add(self, record_id: str) -> None:
        self.hashes += hashlib.blake2b(record_id.encode("utf-8"), digest_size=8).digest()

    def count(self) -> int:
        import numpy as np

        if not self.hashes:
            return 0
        return int(np.unique(np.frombuffer(bytes(self.hashes), dtype=np.uint64)).size)


@dataclass
class DatasetStats:
    rows: Counter = field(default_factory=Counter)  # split -> rows
    by_source: dict[str, Counter] = field(default_factory=dict)  # split -> source -> rows
    boxes: Counter = field(default_factory=Counter)  # split -> boxes
    area_sum: Counter = field(default_factory=Counter)  # split -> sum of box area fractions
    max_phrase_chars: Counter = field(default_factory=Counter)
    histograms: dict[str, list[int]] = field(
        default_factory=lambda: {n: [0] * (len(e) - 1) for n, (e, _) in HISTOGRAMS.items()}
    )
    distinct_ids: dict[str, int] = field(default_factory=dict)
    _ids: dict[str, _DistinctIds] = field(default_factory=dict, repr=False)

    def add(self, row: dict[str, Any], split: str) -> None:
        self.add_many([row], split)

    def add_many(self, rows: list[dict[str, Any]], split: str) -> None:
        """Count ``rows`` (valid rows of one split) in a few array operations. Sums are taken
        in row order (``np.add.accumulate``), so they equal adding the rows one at a time."""
        import numpy as np

        if not rows:
            return
        h = self.histograms
        widths = np.array([float(row["width"]) for row in rows])
        heights = np.array([float(row["height"]) for row in rows])
        phrase_chars = np.array([len(row["phrase"] or "") for row in rows])
        box_counts = np.array([len(row["boxes"]) for row in rows])
        self.rows[split] += len(rows)
        self.by_source.setdefault(split, Counter()).update(row["source"] for row in rows)
        self.boxes[split] += int(box_counts.sum())
        self.max_phrase_chars[split] = max(self.max_phrase_chars[split], int(phrase_chars.max()))
        ids = self._ids.setdefault(split, _DistinctIds())
        for row in rows:
            ids.add(row["id"])
        _count(h["boxes_per_phrase"], "boxes_per_phrase", box_counts)
        _count(h["phrase_chars"], "phrase_chars", phrase_chars)
        _count(h["image_width"], "image_width", widths)
        _count(h["image_height"], "image_height", heights)
        flat = [box for row in rows for box in row["boxes"]]
        if not flat:
            return
        boxes = np.array(flat, dtype=np.float64).reshape(-1, 4)
        image_area = np.repeat(widths * heights, box_counts)
        bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            area = np.where(image_area != 0, bw * bh / np.where(image_area != 0, image_area, 1.0), 0.0)
            aspect = np.where(bh > 0, bw / np.where(bh > 0, bh, 1.0), INF)
        self.area_sum[split] = float(np.add.accumulate(np.concatenate(([float(self.area_sum[split])], area)))[-1])
        _count(h["box_area_fraction"], "box_area_fraction", area)
        _count(h["box_aspect"], "box_aspect", aspect)

    def finish(self) -> "DatasetStats":
        all_ids = _DistinctIds()
        for split, ids in self._ids.items():
            self.distinct_ids[split] = ids.count()
            all_ids.hashes += ids.hashes
        self.distinct_ids["all"] = all_ids.count()
        self._ids = {}
        return self

    def to_json(self) -> dict[str, Any]:
        total_rows = sum(self.rows.values())
        total_boxes = sum(self.boxes.values())
        return {
            "rows": {**dict(self.rows), "all": total_rows},
            "rows_by_source": {split: dict(c) for split, c in sorted(self.by_source.items())},
            "distinct_ids": dict(self.distinct_ids),
            "boxes": {**dict(self.boxes), "all": total_boxes},
            "mean_boxes_per_phrase": {split: self.boxes[split] / n for split, n in self.rows.items() if n}
            | ({"all": total_boxes / total_rows} if total_rows else {}),
            "mean_box_area_fraction": {
                split: self.area_sum[split] / self.boxes[split] for split in self.rows if self.boxes[split]
            }
            | ({"all": sum(self.area_sum.values()) / total_boxes} if total_boxes else {}),
            "max_phrase_chars": {**dict(self.max_phrase_chars), "all": max(self.max_phrase_chars.values(), default=0)},
            "histograms": {
                name: {"edges": [e if math.isfinite(e) else "inf" for e in HISTOGRAMS[name][0]], "counts": counts}
                for name, counts in self.histograms.items()
            },
        }


def drift(current: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any] | None:
    """Histogram drift (total variation distance) and row-count changes against ``previous``."""
    if not previous:
        return None
    tvd: dict[str, float] = {}
    for name, hist in current["histograms"].items():
        old = (previous.get("histograms") or {}).get(name)
        if not old or old.get("edges") != hist["edges"]:
            continue
        p_total, q_total = sum(hist["counts"]), sum(old["counts"])
        if not p_total or not q_total:
            continue
        tvd[name] = round(0.5 * sum(abs(p / p_total - q / q_total) for p, q in zip(hist["counts"], old["counts"])), 4)
    rows_now, rows_before = current["rows"], previous.get("rows") or {}
    sources_now = {s for c in current["rows_by_source"].values() for s in c}
    sources_before = {s for c in (previous.get("rows_by_source") or {}).values() for s in c}
    return {
        "histogram_tvd": tvd,
        "max_tvd": max(tvd.values(), default=0.0),
        "rows": {
            split: {"before": rows_before.get(split, 0), "now": rows_now.get(split, 0)}
            for split in sorted(set(rows_now) | set(rows_before))
        },
        "sources_added": sorted(sources_now - sources_before),
        "sources_removed": sorted(sources_before - sources_now),
    }


@dataclass
class Acceptance:
    success: bool
    failures: list[str]
    result: dict[str, Any]


def _summary_frame(stats: dict[str, Any], drift_info: dict[str, Any] | None) -> Any:
    import pandas as pd

    nan = float("nan")
    rows = []
    for split, n in stats["rows"].items():
        if not n:
            continue
        rows.append(
            {
                "split": split,
                "rows": float(n),
                "distinct_ids": float(stats["distinct_ids"].get(split, 0)),
                "mean_boxes_per_phrase": stats["mean_boxes_per_phrase"].get(split, nan),
                "mean_box_area_fraction": stats["mean_box_area_fraction"].get(split, nan),
                "max_phrase_chars": float(stats["max_phrase_chars"].get(split, 0)),
                "max_drift_tvd": float(drift_info["max_tvd"]) if drift_info and split == "all" else nan,
            }
        )
    return pd.DataFrame(rows)


def run_acceptance(
    stats: dict[str, Any],
    drift_info: dict[str, Any] | None,
    *,
    max_phrase_chars: int,
    max_mean_boxes: float = 50.0,
    max_drift: float = 1.0,
) -> Acceptance:
    """The table-level acceptance suite on the version's per-split summary."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    e = gx.expectations

    def meta(reason: str, note: str) -> dict[str, Any]:
        return {"meta": {"reason": reason}, "notes": note}

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("version")
        .add_dataframe_asset("splits")
        .add_batch_definition_whole_dataframe("summary")
    )
    suite = gx.ExpectationSuite(name=ACCEPTANCE_SUITE)
    for expectation in [
        e.ExpectColumnDistinctValuesToContainSet(
            column="split", value_set=["all", "train"], **meta("train_has_rows", "The version has training rows.")
        ),
        e.ExpectColumnValuesToBeBetween(
            column="rows", min_value=1, **meta("split_rows", "Every split that exists has at least one row.")
        ),
        e.ExpectColumnPairValuesToBeEqual(
            column_A="rows",
            column_B="distinct_ids",
            **meta("unique_ids", "Ids are unique within each split and overall."),
        ),
        e.ExpectColumnValuesToBeBetween(
            column="mean_boxes_per_phrase",
            min_value=1,
            max_value=max_mean_boxes,
            **meta("boxes_per_phrase_bounds", f"Phrases have 1 to {max_mean_boxes:g} boxes on average."),
        ),
        e.ExpectColumnValuesToBeBetween(
            column="mean_box_area_fraction",
            min_value=0,
            max_value=1,
            strict_min=True,
            **meta("box_area_bounds", "Boxes cover a share of their image in (0, 1]."),
        ),
        e.ExpectColumnValuesToBeBetween(
            column="max_phrase_chars",
            min_value=1,
            max_value=max_phrase_chars,
            **meta("phrase_length_bounds", f"Phrases are 1 to {max_phrase_chars} characters."),
        ),
        e.ExpectColumnValuesToBeBetween(
            column="max_drift_tvd",
            max_value=max_drift,
            **meta(
                "drift_bounds",
                f"No histogram moved more than {max_drift:g} (total variation) since the previous version.",
            ),
        ),
    ]:
        suite.add_expectation(expectation)
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="acceptance", data=batch, suite=suite))
    result = definition.run(
        batch_parameters={"dataframe": _summary_frame(stats, drift_info)}, result_format={"result_format": "COMPLETE"}
    )
    failures = [
        (item.expectation_config.meta or {}).get("reason", item.expectation_config.type)
        for item in result.results
        if not item.success
    ]
    return Acceptance(bool(result.success), failures, result.to_json_dict())


# --------------------------------------------------------------------------- report


def bin_label(edge: Any) -> str:
    """A histogram bin's lower edge as a tick label: 1024, 0.001, 0.667; ∞ for the open end."""
    if not isinstance(edge, (int, float)) or not math.isfinite(edge):
        return "∞"
    return f"{edge:g}" if float(edge).is_integer() else f"{edge:.3g}"


def _plot(stats: dict[str, Any], previous: dict[str, Any] | None, out: Path) -> Path:
    """``stats.svg``: each histogram as shares of its rows (beside the previous version's, when
    its bins are the same), and the rows per split stacked by source (the 12 largest)."""
    from grounding_ops.data.charts import PREVIOUS_COLOUR, STACK_COLOURS, THIS_COLOUR, Panel, Series, grid_svg

    panels: list[Panel] = []
    for name, (_, title) in HISTOGRAMS.items():
        hist = stats["histograms"][name]
        labels = [bin_label(e) for e in hist["edges"][:-1]]
        total = sum(hist["counts"]) or 1
        series = [Series("this version", [c / total for c in hist["counts"]], THIS_COLOUR)]
        old = (previous or {}).get("histograms", {}).get(name)
        if old and old.get("edges") == hist["edges"]:
            old_total = sum(old["counts"]) or 1
            series.append(Series("previous", [c / old_total for c in old["counts"]], PREVIOUS_COLOUR))
        panels.append(Panel(title, labels, series, y_label="share"))
    splits = [s for s in ("train", "val", "test") if s in stats["rows_by_source"]]
    totals: Counter[str] = Counter()
    for c in stats["rows_by_source"].values():
        totals.update(c)
    sources = sorted(src for src, _ in totals.most_common(len(STACK_COLOURS)))
    panels.append(
        Panel(
            "rows per split and source",
            splits,
            [
                Series(src, [stats["rows_by_source"][s].get(src, 0) for s in splits], colour)
                for src, colour in zip(sources, STACK_COLOURS)
            ],
            y_label="rows",
            stacked=True,
        )
    )
    path = out / "stats.svg"
    path.write_text(grid_svg(panels), encoding="utf-8")
    return path


def render_report(
    out: Path,
    stats: dict[str, Any],
    drift_info: dict[str, Any] | None,
    acceptance: Acceptance,
    previous_version: str | None,
    version: str,
    previous: dict[str, Any] | None = None,
) -> list[Path]:
    """Write ``stats.json``, ``stats.svg`` and ``index.html`` into ``out``; return them."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "version": version,
        "previous_version": previous_version,
        "stats": stats,
        "drift": drift_info,
        "acceptance": {"success": acceptance.success, "failures": acceptance.failures},
    }
    (out / STATS_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True))
    plot = _plot(stats, previous, out)
    esc = html.escape

    def table(rows: list[list[Any]], header: list[str]) -> str:
        head = "".join(f"<th>{esc(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    parts = [
        f"<h1>dataset version {esc(version)}</h1>",
        f"<p>acceptance suite: <b>{'passed' if acceptance.success else 'FAILED: ' + esc(', '.join(acceptance.failures))}"
        "</b></p>",
        "<h2>rows per split and source</h2>",
        table(
            [[split, src, n] for split, c in stats["rows_by_source"].items() for src, n in sorted(c.items())],
            ["split", "source", "rows"],
        ),
        table(
            [
                [
                    k,
                    stats["rows"].get(k, 0),
                    stats["distinct_ids"].get(k, 0),
                    f"{stats['mean_boxes_per_phrase'].get(k, 0):.2f}",
                    f"{stats['mean_box_area_fraction'].get(k, 0):.3f}",
                ]
                for k in stats["rows"]
            ],
            ["split", "rows", "distinct ids", "mean boxes per phrase", "mean box area share"],
        ),
        f'<h2>distributions</h2><img src="{plot.name}" alt="histograms" style="max-width:100%">',
    ]
    if drift_info:
        parts.append(f"<h2>compared with the previous version {esc(previous_version or '')}</h2>")
        parts.append(
            table(
                [[name, v] for name, v in sorted(drift_info["histogram_tvd"].items())],
                ["histogram", "total variation distance"],
            )
        )
        parts.append(
            table(
                [[s, r["before"], r["now"]] for s, r in drift_info["rows"].items()],
                ["split", "rows before", "rows now"],
            )
        )
        if drift_info["sources_added"] or drift_info["sources_removed"]:
            parts.append(
                f"<p>sources added: {esc(', '.join(drift_info['sources_added']) or '-')}; removed: "
                f"{esc(', '.join(drift_info['sources_removed']) or '-')}</p>"
            )
    else:
        parts.append("<p>no previous version to compare with.</p>")
    index = out / "index.html"
    index.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>dataset report</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse;margin:8px 0}"
        "td,th{border:1px solid #ccc;padding:2px 8px}</style></head><body>" + "".join(parts) + "</body></html>",
        encoding="utf-8",
    )
    return [out / STATS_FILE, plot, index]
