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
) -> WandbRun | None:
    """Log one finished run (``config`` and summary ``metrics``); None when disabled or failed."""
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
    for attempt_mode in ([mode, "offline"] if mode == "online" else [mode]):
        try:
            return _log(wandb, attempt_mode, name, dict(config), dict(metrics), job_type, project, tags, root)
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
) -> WandbRun:
    settings = wandb.Settings(silent=True, console="off", init_timeout=INIT_TIMEOUT_S, x_disable_stats=True)
    run = wandb.init(
        project=project,
        name=name,
        job_type=job_type,
        config=config,
        tags=list(tags),
        mode=mode,
        dir=str(root),
        settings=settings,
        reinit="create_new",
    )
    try:
        run.log(dict(metrics))
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
