"""The VeRL engine's commands and log reading, for the training runner.

The runner (``grounding_ops.training.runner``) owns the process, the streaming and the checkpoint
sync; this module only says *what* to run and *how to read* what VeRL prints:

- ``trainer_command(overrides, python=sys.executable) -> list[str]``:
  ``python -m verl.trainer.main_ppo <overrides...>`` (argv list; no shell).
- ``trainer_env(base=None) -> dict[str, str]``: the environment for that process (unbuffered
  output, full Hydra errors, no Ray usage reporting), on top of ``base`` (default ``os.environ``).
- ``actor_has_model(step_dir) -> bool``: whether ``global_step_N/actor/`` holds the model shard of
  every rank (``fsdp_config.json``'s world size). verl's rotation (``max_actor_ckpt_to_keep``)
  deletes ``actor/`` and leaves ``data.pt``; a node writing to its own disk leaves other ranks'
  shards elsewhere: neither is a checkpoint. It is the VeRL engine's ``is_complete`` on top of
  the layout of :mod:`grounding_ops.training.checkpoints` (folder names, tracker file).
- ``incomplete_steps(checkpoint_dir) -> str``: what the step folders that are not checkpoints lack,
  for the runner's error message.
- ``merge_command(step_dir, target_dir, python=sys.executable, exclude_modules=None) -> list[str]``:
  ``python -m grounding_ops.training.verl_merge --step-dir <step_dir> --target <target_dir>``:
  verl's model merger plus the LoRA merge (see :mod:`grounding_ops.training.verl_merge`).
- ``parse_log_line(line) -> StepMetrics | None``: VeRL's console logger prints one line per step,
  ``step:N - key:value - key:value ...`` (possibly behind a Ray ``(TaskRunner pid=..)`` prefix);
  this returns the step with reward mean, KL, throughput, time per step and, on validation
  steps only, the validation IoU and accuracy (``val-aux/.../iou/mean@N``, ``val-core/.../acc/mean@N``).
- ``StepMetrics.summary() -> str``: ``step 3 | reward 0.412 | val IoU 0.380 | KL 0.0012 | 1520 tok/s/GPU | 12.3 s/step``.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from grounding_ops.training import checkpoints as ckpt


def trainer_command(overrides: Sequence[str], python: str | None = None) -> list[str]:
    """argv of the VeRL GRPO trainer for the given Hydra overrides."""
    return [python or sys.executable, "-m", "verl.trainer.main_ppo", *overrides]


def trainer_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for the trainer subprocess: readable streamed logs, no phoning home."""
    env = dict(os.environ if base is None else base)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("HYDRA_FULL_ERROR", "1")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def actor_world_size(step_dir: str | Path) -> int | None:
    """The world size recorded in ``<step_dir>/actor/fsdp_config.json`` (None when unreadable)."""
    try:
        size = json.loads((Path(step_dir) / "actor" / "fsdp_config.json").read_text())["world_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return size if isinstance(size, int) and size > 0 else None


def missing_shards(step_dir: str | Path) -> list[str]:
    """The files a complete ``global_step_N/actor`` lacks (empty when it holds the model)."""
    actor = Path(step_dir) / "actor"
    world = actor_world_size(step_dir)
    if world is None:
        return ["actor/fsdp_config.json"]
    names = [f"model_world_size_{world}_rank_{rank}.pt" for rank in range(world)]
    missing = [f"actor/{name}" for name in names if not (actor / name).is_file()]
    if not (actor / "huggingface" / "config.json").is_file():
        missing.append("actor/huggingface/config.json")
    return missing


def actor_has_model(step_dir: str | Path) -> bool:
    return not missing_shards(step_dir)


def incomplete_steps(checkpoint_dir: str | Path) -> str:
    """A sentence on the step folders under ``checkpoint_dir`` that lack shards ("" when none do)."""
    found = []
    for _, folder in ckpt.step_dirs(checkpoint_dir):
        missing = missing_shards(folder)
        if missing:
            found.append(f"{folder.name} lacks {', '.join(missing[:3])}" + (" ..." if len(missing) > 3 else ""))
    if not found:
        return ""
    return (
        ". Incomplete checkpoints: " + "; ".join(found) + " (on several nodes, every node must write to "
        "the same shared_dir)"
    )


def merge_command(
    step_dir: str | Path, target_dir: str | Path, python: str | None = None, exclude_modules: str | None = None
) -> list[str]:
    """argv that merges one ``global_step_N`` folder (FSDP shards, and a LoRA adapter) into a HF folder."""
    command = [
        python or sys.executable,
        "-m",
        "grounding_ops.training.verl_merge",
        "--step-dir",
        str(step_dir),
        "--target",
        str(target_dir),
    ]
    if exclude_modules:
        command += ["--exclude-modules", exclude_modules]
    return command


# ---------------------------------------------------------------------------------------- logs
_STEP_LINE = re.compile(r"(?:^|[\s)\]])step:(\d+)((?: - [^\s:]+:[^\n]*?)+)\s*$")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|inf)")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

REWARD_KEYS = ("critic/score/mean", "critic/rewards/mean")
KL_KEYS = ("actor/kl_loss", "actor/ppo_kl", "critic/kl")
THROUGHPUT_KEYS = ("perf/throughput",)
TIME_KEYS = ("perf/time_per_step", "timing_s/step")


@dataclass
class StepMetrics:
    """One training step as VeRL reported it; ``values`` holds every numeric metric of the line."""

    step: int
    values: dict[str, float] = field(default_factory=dict)

    def _first(self, keys: Sequence[str]) -> float | None:
        for key in keys:
            if key in self.values:
                return self.values[key]
        return None

    def _validation(self, name: str) -> float | None:
        """Mean over the validation metrics ``val-*/<data source>/<name>/mean@N`` of this line.

        verl 0.9.1 computes the reward's extra values (IoU, acc) only on validation steps; a
        training step line has none, so there is no training-time IoU to report.
        """
        found = [
            v
            for k, v in self.values.items()
            if k.startswith("val-") and re.search(rf"/{name}/mean@\d+$", k) and not math.isnan(v)
        ]
        return sum(found) / len(found) if found else None

    @property
    def reward_mean(self) -> float | None:
        return self._first(REWARD_KEYS)

    @property
    def val_iou(self) -> float | None:
        return self._validation("iou")

    @property
    def val_acc(self) -> float | None:
        return self._validation("acc")

    @property
    def kl(self) -> float | None:
        return self._first(KL_KEYS)

    @property
    def throughput(self) -> float | None:
        """Tokens per second per GPU."""
        return self._first(THROUGHPUT_KEYS)

    @property
    def seconds_per_step(self) -> float | None:
        return self._first(TIME_KEYS)

    def summary(self) -> str:
        parts = [f"step {self.step}"]
        for label, value, fmt in (
            ("reward", self.reward_mean, "{:.3f}"),
            ("val IoU", self.val_iou, "{:.3f}"),
            ("val acc", self.val_acc, "{:.3f}"),
            ("KL", self.kl, "{:.4g}"),
        ):
            if value is not None:
                parts.append(f"{label} {fmt.format(value)}")
        if self.throughput is not None:
            parts.append(f"{self.throughput:.0f} tok/s/GPU")
        if self.seconds_per_step is not None:
            parts.append(f"{self.seconds_per_step:.1f} s/step")
        return " | ".join(parts)

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "step": self.step,
            "reward_mean": self.reward_mean,
            "val_iou": self.val_iou,
            "val_acc": self.val_acc,
            "kl": self.kl,
            "throughput_tokens_per_s_per_gpu": self.throughput,
            "seconds_per_step": self.seconds_per_step,
        }


def _parse_number(text: str) -> float | None:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    # numpy/torch reprs such as np.float64(0.25) or tensor(0.25)
    match = _NUMBER.search(text.split("(", 1)[1] if "(" in text else text)
    if match is None:
        return None
    try:
        return float(match.group(0))
    except ValueError:
        return None


def parse_log_line(line: str) -> StepMetrics | None:
    """Parse one VeRL console metrics line; None for any other line."""
    clean = _ANSI.sub("", line).rstrip()
    match = _STEP_LINE.search(clean)
    if match is None:
        return None
    values: dict[str, float] = {}
    for item in match.group(2).split(" - ")[1:]:
        key, sep, raw = item.partition(":")
        if not sep:
            continue
        number = _parse_number(raw)
        if number is not None:
            values[key.strip()] = number
    return StepMetrics(step=int(match.group(1)), values=values)
