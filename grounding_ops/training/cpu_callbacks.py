"""The CPU engine's trainer callbacks: one readable line per GRPO step, checkpoints named as VeRL names them.

Imported by :func:`grounding_ops.training.cpu_engine.run` only (transformers is a heavy import).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from grounding_ops.training.checkpoints import STEP_PREFIX, write_tracker


def tokens_per_s(mean_length: Any, completions: int, seconds: float) -> float | None:
    """Generated tokens per second of a step (mean completion length x completions / step time)."""
    if mean_length is None or not seconds or seconds != seconds or seconds <= 0:
        return None
    return float(mean_length) * completions / seconds


class StepPrinter(TrainerCallback):
    """One readable line per step (reward, IoU, KL, throughput) and the step's history entry.

    :param total_steps: the run's target step (for "step N/M").
    :param updates_per_step: optimizer updates in one GRPO step (a step is one train batch).
    :param batch_completions: completions generated per step (prompts x rollouts).
    """

    def __init__(self, total_steps: int, updates_per_step: int, batch_completions: int) -> None:
        self.total_steps = total_steps
        self.updates_per_step = updates_per_step
        self.batch_completions = batch_completions
        self.last = time.perf_counter()
        self.step_seconds: list[float] = []
        self.history: list[dict[str, Any]] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.last = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        now = time.perf_counter()
        self.step_seconds.append(now - self.last)
        self.last = now

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        updates = self.updates_per_step
        if not logs or "reward" not in logs or state.global_step % updates:
            return
        step = state.global_step // updates
        seconds = sum(self.step_seconds[-updates:]) if self.step_seconds else float("nan")

        def num(key: str, fmt: str = ".3f") -> str:
            value = logs.get(key)
            return "-" if value is None else format(float(value), fmt)

        completions = self.batch_completions
        self.history.append(
            {
                "step": step,
                "reward_mean": logs.get("reward"),
                "iou": logs.get("iou"),
                "acc": logs.get("acc"),
                "format_ok": logs.get("format_ok"),
                "ended": logs.get("ended"),
                "kl": logs.get("kl"),
                "loss": logs.get("loss"),
                "response_length": logs.get("completions/mean_length"),
                "seconds_per_step": seconds,
                "entropy": logs.get("entropy"),
                "tokens_per_s": tokens_per_s(logs.get("completions/mean_length"), completions, seconds),
                "timestamp": time.time(),
            }
        )
        print(
            f"step {step}/{self.total_steps} reward_mean={num('reward')} iou={num('iou')} acc={num('acc')} "
            f"format_ok={num('format_ok', '.2f')} ended={num('ended', '.2f')} kl={num('kl', '.4f')} loss={num('loss', '.4f')} "
            f"response_len={num('completions/mean_length', '.1f')} "
            f"step_time={seconds:.2f}s throughput={completions / seconds if seconds > 0 else 0:.1f} seq/s",
            flush=True,
        )


class CheckpointNamer(TrainerCallback):
    """Rename the trainer's ``checkpoint-K`` to ``global_step_N``, then write the tracker file."""

    def __init__(self, checkpoint_dir: Path, updates_per_step: int) -> None:
        self.checkpoint_dir = checkpoint_dir
        self.updates_per_step = updates_per_step

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        source = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not source.is_dir() or state.global_step % self.updates_per_step:
            return
        step = state.global_step // self.updates_per_step
        target = self.checkpoint_dir / f"{STEP_PREFIX}{step}"
        if target.exists():
            shutil.rmtree(target)
        os.replace(source, target)
        write_tracker(self.checkpoint_dir, step)
        print(f"saved checkpoint {target.name}", flush=True)
