"""Weights & Biases logging that never prompts and never breaks a run.

Online when ``WANDB_API_KEY`` is set, offline run folders otherwise (sync them later
with ``wandb sync``); ``WANDB_MODE=disabled`` turns it off, ``WANDB_MODE=offline``
forces offline runs even with a key. Any W&B failure (no network, bad key, wandb
not installed) is logged as a warning and the caller carries on.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

log = logging.getLogger(__name__)

DEFAULT_PROJECT = "grounding-ops"
INIT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class WandbRun:
    """Where a logged W&B run lives: ``url`` online, ``run_dir`` always."""

    id: str
    mode: str
    url: str | None
    run_dir: str | None

    @property
    def reference(self) -> str:
        return self.url or (f"offline:{self.run_dir}" if self.run_dir else f"offline:{self.id}")


def wandb_mode(env: Mapping[str, str] | None = None) -> str:
    """``online``, ``offline`` or ``disabled`` from the environment (never asks)."""
    env = os.environ if env is None else env
    forced = (env.get("WANDB_MODE") or "").strip().lower()
    if forced in ("disabled", "offline"):
        return forced
    if forced == "dryrun":
        return "offline"
    return "online" if env.get("WANDB_API_KEY") else "offline"


def log_run(
    *,
    name: str,
    config: Mapping[str, Any],
    metrics: Mapping[str, float],
    job_type: str = "evaluation",
    project: str | None = None,
    tags: tuple[str, ...] = (),
    directory: str | Path | None = None,
    group: str | None = None,
    predictions: list[Mapping[str, Any]] | None = None,
) -> WandbRun | None:
    """Log one finished run (``config`` and summary ``metrics``); None when disabled or failed.

    ``group`` groups runs (the DAG run); ``predictions`` (rows with ``image_bytes``,
    ``gt_boxes``, ``pred_boxes`` in pixels, ``phrase``, ``iou``, ``response``) become a
    ``predictions`` table whose images carry the true and predicted boxes.
    """
    mode = wandb_mode()
    if mode == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        log.warning("wandb is not installed: metrics not sent to Weights & Biases")
        return None
    project = project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT
    root = Path(directory or os.environ.get("WANDB_DIR") or Path.cwd()).resolve()
    root.mkdir(parents=True, exist_ok=True)
    for attempt_mode in [mode, "offline"] if mode == "online" else [mode]:
        try:
            return _log(
                wandb,
                attempt_mode,
                name,
                dict(config),
                dict(metrics),
                job_type,
                project,
                tags,
                root,
                group=group,
                predictions=predictions,
            )
        except Exception as exc:  # no network, bad key, service start failure: never fatal
            log.warning("W&B %s logging failed (%s: %s)", attempt_mode, type(exc).__name__, exc)
    return None


def _log(
    wandb: Any,
    mode: str,
    name: str,
    config: dict[str, Any],
    metrics: dict[str, float],
    job_type: str,
    project: str,
    tags: tuple[str, ...],
    root: Path,
    *,
    group: str | None = None,
    predictions: list[Mapping[str, Any]] | None = None,
) -> WandbRun:
    settings = wandb.Settings(silent=True, console="off", init_timeout=INIT_TIMEOUT_S, x_disable_stats=True)
    run = wandb.init(
        project=project,
        name=name,
        job_type=job_type,
        config=config,
        tags=list(tags),
        group=group or None,
        mode=mode,
        dir=str(root),
        settings=settings,
        reinit="create_new",
    )
    try:
        run.log(dict(metrics))
        if predictions:
            run.log({"predictions": predictions_table(wandb, predictions)})
        run.summary.update(dict(metrics))
        info = WandbRun(
            id=str(run.id),
            mode=mode,
            url=getattr(run, "url", None) if mode == "online" else None,
            run_dir=str(Path(run.dir).parent) if getattr(run, "dir", None) else None,
        )
    finally:
        run.finish()
    return info


def _wandb_boxes(boxes: Any, class_id: int, caption: str) -> list[dict[str, Any]]:
    return [
        {
            "position": {"minX": float(b[0]), "minY": float(b[1]), "maxX": float(b[2]), "maxY": float(b[3])},
            "domain": "pixel",
            "class_id": class_id,
            "box_caption": caption,
        }
        for b in boxes or []
    ]


def predictions_table(wandb: Any, rows: list[Mapping[str, Any]]) -> Any:
    """A ``wandb.Table`` of predictions: the image with true and predicted boxes, phrase, IoU, answer."""
    import io

    from PIL import Image

    labels = {0: "ground truth", 1: "prediction"}
    table = wandb.Table(columns=["id", "image", "phrase", "iou", "response"])
    for row in rows:
        image = Image.open(io.BytesIO(row["image_bytes"])).convert("RGB")
        boxes = {
            "ground_truth": {"box_data": _wandb_boxes(row.get("gt_boxes"), 0, "truth"), "class_labels": labels},
            "predictions": {"box_data": _wandb_boxes(row.get("pred_boxes"), 1, "predicted"), "class_labels": labels},
        }
        table.add_data(
            str(row.get("id")),
            wandb.Image(image, boxes=boxes),
            str(row.get("phrase")),
            float(row.get("iou") or 0.0),
            str(row.get("response") or "")[:500],
        )
    return table
