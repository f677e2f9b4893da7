"""Render a :class:`TrainingSpec` as VeRL 0.9.1 Hydra overrides for ``verl.trainer.main_ppo``.

Every key here exists in ``verl/trainer/config/ppo_trainer.yaml`` of verl 0.9.1 (its defaults
tree: ``data/legacy_data.yaml``, ``model/hf_model.yaml``, ``rollout/rollout.yaml``,
``actor/dp_actor.yaml``, ``reward/reward.yaml``); ``tests/ml/test_verl_compose.py`` composes the
result for every preset against the installed verl in struct mode, so a renamed key fails CI.

Public API (used by ``grounding_ops.training.runner``, ``cli`` and ``ray_jobs``):

- ``reward_file_path() -> Path``: the packaged reward module VeRL loads by file path.
- ``RunPaths(train_file, val_file, checkpoint_dir, model_path=None)`` and
  ``RunPaths.for_work_dir(work_dir, spec)``: the local files the trainer reads and writes.
- ``render_overrides(spec, paths) -> list[str]``: ``key=value`` strings, one argv item each
  (pass them as a list to ``subprocess``; never join them into a shell string).
- ``FORBIDDEN_KEY_PREFIXES``: keys of the draft guide that verl 0.9.1 does not have.

The image resizing: VeRL resizes each image with ``qwen_vl_utils`` (factor ``2*image_patch_size``)
before the processor sees it; ``min_pixels``/``max_pixels`` go to the processor call through
``data.mm_processor_kwargs`` so prompt lengths and the answer coordinates follow the same bounds
as the exported dataset's ``resized_size``.
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
            checkpoint_dir=str(work / "checkpoints"),
            model_path=model_path,
        )


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


def override_items(spec: TrainingSpec, paths: RunPaths) -> list[tuple[str, Any]]:
    """The (key, python value) pairs; ``render_overrides`` formats them."""
    model_path = paths.model_path or spec.model
    if model_path.startswith(REMOTE_MODEL_PREFIXES):
        raise ValueError(
            f"model {model_path!r} is not local: download it first and pass RunPaths(model_path=<local folder>)"
        )
    val_file = paths.val_file or paths.train_file
    validate = paths.val_file is not None and spec.test_freq > 0
    micro = spec.micro_batch_size_per_gpu
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
        ("trainer.total_epochs", spec.total_epochs),
        ("trainer.save_freq", spec.save_freq),
        ("trainer.test_freq", spec.test_freq if validate else -1),
        ("trainer.val_before_train", validate),
        ("trainer.default_local_dir", paths.checkpoint_dir),
        ("trainer.resume_mode", "auto"),
    ]
    if spec.total_steps is not None:
        items.append(("trainer.total_training_steps", spec.total_steps))
    return items


def render_overrides(spec: TrainingSpec, paths: RunPaths) -> list[str]:
    """VeRL Hydra overrides for a validated spec, one ``key=value`` string per argv item."""
    spec.validate(engine="verl")
    overrides = [f"{key}={hydra_value(value)}" for key, value in override_items(spec, paths)]
    bad = [o for o in overrides if o.lstrip("+").startswith(FORBIDDEN_KEY_PREFIXES)]
    if bad:  # a guard against regressions: these keys do not exist in verl 0.9.1
        raise AssertionError(f"forbidden VeRL keys rendered: {bad}")
    return overrides
