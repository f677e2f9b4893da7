"""Render a :class:`TrainingSpec` as VeRL 0.9.1 Hydra overrides for ``verl.trainer.main_ppo``.

Every key here exists in ``verl/trainer/config/ppo_trainer.yaml`` of verl 0.9.1 (its defaults
tree: ``data/legacy_data.yaml``, ``model/hf_model.yaml``, ``rollout/rollout.yaml``,
``actor/dp_actor.yaml``, ``reward/reward.yaml``); ``tests/ml/test_verl_compose.py`` composes the
result for every preset against the installed verl in struct mode, so a renamed key fails CI.

Public API (used by ``grounding_ops.training.runner``, ``cli`` and ``ray_jobs``):

- ``reward_file_path() -> Path``: the packaged reward module VeRL loads by file path.
- ``RunPaths(train_file, val_file, checkpoint_dir, model_path=None)`` and
  ``RunPaths.for_work_dir(work_dir, spec)``: the local files the trainer reads and writes.
- ``render_overrides(spec, paths, target_steps=None) -> list[str]``: ``key=value`` strings, one
  argv item each (pass them as a list to ``subprocess``; never join them into a shell string).
  ``target_steps`` is the runner's step target (from the rows that survive VeRL's overlong-prompt
  filter); it becomes ``trainer.total_training_steps`` so VeRL and the runner stop at the same step.
- ``FORBIDDEN_KEY_PREFIXES``: keys of the draft guide that verl 0.9.1 does not have.

The image resizing: the export already resized every image to its ``resized_size`` (the frame of
the answers); VeRL's ``qwen_vl_utils`` resize and the processor's (``data.mm_processor_kwargs``,
set to the same ``min_pixels``/``max_pixels``) leave such an image as it is. The runner checks
that the spec's bounds and resize factor are the dataset manifest's before training.

Schedule: verl saves only when ``save_freq > 0`` (and always at its last step then), so
``save_freq=-1`` ("only at the end") is rendered as a frequency past the last step; with
``total_steps`` set, ``total_epochs`` is raised so the epochs never end the run early.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grounding_ops.training.spec import TrainingSpec

REWARD_FUNCTION_NAME = "compute_score"
# LoRA adapts the language model only: PEFT's "all-linear" minus every module under the vision
# tower (transformers 5 names it ``model.visual.*`` for Qwen2-VL, Qwen2.5-VL and Qwen3-VL).
# verl 0.9.1 passes ``exclude_modules`` to peft.LoraConfig, where a string is a full-match regex.
LORA_TARGET_MODULES = "all-linear"
LORA_EXCLUDE_MODULES = r".*visual.*"
# ViT patch size per family (VeRL's data.image_patch_size; the resize factor is twice this).
IMAGE_PATCH_SIZE: dict[str, int] = {"qwen2.5-vl": 14, "qwen2-vl": 14, "qwen3-vl": 16}
# Keys from the draft guide that do not exist in verl 0.9.1 (or are legacy aliases we avoid).
FORBIDDEN_KEY_PREFIXES: tuple[str, ...] = (
    "reward_model.",
    "custom_reward_function.",
    "model.",
    "megatron.",
    "data.enable_sequence_balance",
    "actor_rollout_ref.model.peft",
    "actor_rollout_ref.actor.megatron",
)
REMOTE_MODEL_PREFIXES: tuple[str, ...] = ("s3://", "tiny:")
# trainer.save_freq for "only at the end" when the step target is not known yet (print-overrides).
SAVE_ONLY_AT_END = 1_000_000_000
# Processes for VeRL's overlong-prompt filter at start-up (GPU nodes have many cores).
FILTER_WORKERS = 8


def reward_file_path() -> Path:
    """Path of ``grounding_ops/reward/verl_reward.py`` in the installed package."""
    import grounding_ops

    path = Path(grounding_ops.__file__).resolve().parent / "reward" / "verl_reward.py"
    if not path.is_file():
        raise FileNotFoundError(
            f"the VeRL reward module {path} is missing: reinstall grounding-ops (pip install .) "
            "so the package includes grounding_ops/reward/verl_reward.py"
        )
    return path


@dataclass(frozen=True)
class RunPaths:
    """Local files of one training run on the trainer machine."""

    train_file: str
    val_file: str | None
    checkpoint_dir: str
    model_path: str | None = None  # local copy of the model; None = use spec.model as is

    @classmethod
    def for_work_dir(cls, work_dir: str | Path, spec: TrainingSpec) -> "RunPaths":
        """The default layout under a work directory: data/, model/ (for remote models), checkpoints/."""
        work = Path(work_dir)
        model_path = str(work / "model") if spec.model.startswith(REMOTE_MODEL_PREFIXES) else None
        return cls(
            train_file=str(work / "data" / "train.parquet"),
            val_file=str(work / "data" / "val.parquet"),
            checkpoint_dir=str(checkpoint_root(work, spec)),
            model_path=model_path,
        )


def checkpoint_root(work_dir: str | Path, spec: TrainingSpec, run_name: str = "") -> Path:
    """Where VeRL writes checkpoints: the work folder on one node, ``shared_dir`` on several
    (every rank writes its own shard there, so the merge finds all of them in one folder)."""
    if spec.nnodes > 1:
        return Path(spec.shared_dir) / (run_name or spec.experiment_name) / "checkpoints"
    return Path(work_dir) / "checkpoints"


_PLAIN = re.compile(r"^[A-Za-z0-9_\-+./:@%~]+$")
_SPECIAL_WORDS = {"true", "false", "null", "none", "nan", "inf", "-inf", "+inf"}


def hydra_value(value: Any) -> str:
    """Format a Python value as a Hydra override value (quoting strings that need it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    text = str(value)
    looks_typed = text.lower() in _SPECIAL_WORDS or _is_number(text)
    if text and _PLAIN.match(text) and not looks_typed:
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def override_items(spec: TrainingSpec, paths: RunPaths, target_steps: int | None = None) -> list[tuple[str, Any]]:
    """The (key, python value) pairs; ``render_overrides`` formats them."""
    model_path = paths.model_path or spec.model
    if model_path.startswith(REMOTE_MODEL_PREFIXES):
        raise ValueError(
            f"model {model_path!r} is not local: download it first and pass RunPaths(model_path=<local folder>)"
        )
    val_file = paths.val_file or paths.train_file
    validate = paths.val_file is not None and spec.test_freq > 0
    micro = spec.micro_batch_size_per_gpu
    total_steps = target_steps if target_steps is not None else spec.total_steps
    save_freq = spec.save_freq if spec.save_freq > 0 else (total_steps or SAVE_ONLY_AT_END)
    # verl stops at whichever comes first, the epochs or total_training_steps: with a step target,
    # give it enough epochs (each epoch is at least one step).
    total_epochs = max(spec.total_epochs, int(total_steps)) if spec.total_steps is not None else spec.total_epochs
    items: list[tuple[str, Any]] = [
        # algorithm
        ("algorithm.adv_estimator", "grpo"),
        ("algorithm.use_kl_in_reward", False),
        # data (RLHFDataset over the exported parquet)
        ("data.train_files", paths.train_file),
        ("data.val_files", val_file),
        ("data.prompt_key", "prompt"),
        ("data.image_key", "images"),
        ("data.reward_fn_key", "data_source"),
        ("data.train_batch_size", spec.train_batch_size),
        ("data.max_prompt_length", spec.max_prompt_length),
        ("data.max_response_length", spec.max_response_length),
        ("data.filter_overlong_prompts", True),
        ("data.filter_overlong_prompts_workers", FILTER_WORKERS),
        # without a val split VeRL still builds (and filters) a val set: one row of the train file
        ("data.val_max_samples", spec.val_max_samples if paths.val_file is not None else 1),
        ("data.val_batch_size", None if paths.val_file is not None else 1),  # never 0, even if that row is filtered
        ("data.truncation", "error"),
        ("data.seed", spec.seed),
        ("data.image_patch_size", IMAGE_PATCH_SIZE[spec.model_family]),
        ("+data.mm_processor_kwargs.min_pixels", spec.min_pixels),
        ("+data.mm_processor_kwargs.max_pixels", spec.max_pixels),
        # reward: our IoU reward, loaded by file path
        ("reward.custom_reward_function.path", str(reward_file_path())),
        ("reward.custom_reward_function.name", REWARD_FUNCTION_NAME),
        # model
        ("actor_rollout_ref.model.path", model_path),
        ("actor_rollout_ref.model.enable_gradient_checkpointing", spec.gradient_checkpointing),
        ("actor_rollout_ref.model.use_remove_padding", True),
        # actor (FSDP)
        ("actor_rollout_ref.actor.strategy", "fsdp"),
        ("actor_rollout_ref.actor.optim.lr", spec.learning_rate),
        ("actor_rollout_ref.actor.ppo_mini_batch_size", spec.ppo_mini_batch_size),
        ("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu", micro),
        ("actor_rollout_ref.actor.use_kl_loss", spec.use_kl_loss),
        ("actor_rollout_ref.actor.kl_loss_coef", spec.kl_coef),
        ("actor_rollout_ref.actor.kl_loss_type", spec.kl_type),
        ("actor_rollout_ref.actor.entropy_coeff", spec.entropy_coef),
        ("actor_rollout_ref.actor.fsdp_config.param_offload", spec.param_offload),
        ("actor_rollout_ref.actor.fsdp_config.optimizer_offload", spec.optimizer_offload),
        # reference policy (used for the KL loss)
        ("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu", micro),
        ("actor_rollout_ref.ref.fsdp_config.param_offload", spec.param_offload),
        # rollout (vLLM)
        ("actor_rollout_ref.rollout.name", "vllm"),
        ("actor_rollout_ref.rollout.n", spec.rollout_n),
        ("actor_rollout_ref.rollout.temperature", spec.temperature),
        ("actor_rollout_ref.rollout.tensor_model_parallel_size", spec.tensor_parallel_size),
        ("actor_rollout_ref.rollout.gpu_memory_utilization", spec.gpu_memory_utilization),
        # null would size vLLM's context (and KV cache) for the model's full 128k
        ("actor_rollout_ref.rollout.max_model_len", spec.max_prompt_length + spec.max_response_length),
        ("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu", micro),
        ("actor_rollout_ref.rollout.seed", spec.seed),
    ]
    if spec.use_lora:
        items += [
            ("actor_rollout_ref.model.lora_rank", spec.lora_rank),
            ("actor_rollout_ref.model.lora_alpha", spec.lora_alpha),
            ("actor_rollout_ref.model.target_modules", LORA_TARGET_MODULES),
            ("actor_rollout_ref.model.exclude_modules", LORA_EXCLUDE_MODULES),
        ]
    items += [
        # trainer
        ("trainer.project_name", spec.project_name),
        ("trainer.experiment_name", spec.experiment_name),
        ("trainer.logger", list(spec.logger)),
        ("trainer.n_gpus_per_node", spec.gpus_per_node),
        ("trainer.nnodes", spec.nnodes),
        ("trainer.total_epochs", total_epochs),
        ("trainer.save_freq", save_freq),
        ("trainer.max_actor_ckpt_to_keep", spec.max_checkpoints_to_keep),
        ("trainer.test_freq", spec.test_freq if validate else -1),
        ("trainer.val_before_train", validate),
        ("trainer.default_local_dir", paths.checkpoint_dir),
        ("trainer.resume_mode", "auto"),
    ]
    if total_steps is not None:
        items.append(("trainer.total_training_steps", total_steps))
    return items


def render_overrides(spec: TrainingSpec, paths: RunPaths, target_steps: int | None = None) -> list[str]:
    """VeRL Hydra overrides for a validated spec, one ``key=value`` string per argv item."""
    spec.validate(engine="verl")
    overrides = [f"{key}={hydra_value(value)}" for key, value in override_items(spec, paths, target_steps)]
    bad = [o for o in overrides if o.lstrip("+").startswith(FORBIDDEN_KEY_PREFIXES)]
    if bad:  # a guard against regressions: these keys do not exist in verl 0.9.1
        raise AssertionError(f"forbidden VeRL keys rendered: {bad}")
    return overrides
