"""Our rendered overrides against the installed verl 0.9.1: Hydra composition (struct mode),
VeRL's own config validation, its reward loader, and the LoRA module selection."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import warnings
from pathlib import Path

import pytest

pytest.importorskip("verl")
pytest.importorskip("hydra")

from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from grounding_ops.training.presets import PRESET_NAMES, get_preset  # noqa: E402
from grounding_ops.training.spec import TrainingSpec  # noqa: E402
from grounding_ops.training.verl_overrides import (  # noqa: E402
    RunPaths,
    hydra_value,
    override_items,
    render_overrides,
    reward_file_path,
)

pytestmark = pytest.mark.ml


def _config_dir() -> str:
    import verl

    return str(Path(verl.__file__).resolve().parent / "trainer" / "config")


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=_config_dir(), version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


def _verl_validate(cfg) -> None:
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    if cfg.actor_rollout_ref.model.lora_rank > 0 and importlib.util.find_spec("vllm") is None:
        # VeRL's last check maps the LoRA rank onto vLLM's allowed ranks and needs vLLM installed
        # (it is in the GPU image, not in CPU CI); TrainingSpec.validate caps the rank at 512 instead.
        cfg = cfg.copy()
        cfg.actor_rollout_ref.model.lora_rank = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))


def test_installed_verl_is_0_9_1() -> None:
    import verl

    assert verl.__version__ == "0.9.1"


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_preset_composes_in_struct_mode_with_the_spec_values(name: str, tmp_path: Path) -> None:
    spec = get_preset(name)
    paths = RunPaths.for_work_dir(tmp_path / "work dir", spec)  # a space: quoting must hold
    cfg = _compose(render_overrides(spec, paths))
    assert OmegaConf.is_struct(cfg)

    assert cfg.algorithm.adv_estimator == "grpo"
    assert cfg.data.train_files == paths.train_file and cfg.data.val_files == paths.val_file
    assert cfg.data.image_key == "images" and cfg.data.prompt_key == "prompt"
    assert cfg.data.train_batch_size == spec.train_batch_size
    assert cfg.data.max_prompt_length == spec.max_prompt_length
    assert cfg.data.max_response_length == spec.max_response_length
    assert cfg.data.filter_overlong_prompts is True
    assert dict(cfg.data.mm_processor_kwargs) == {"min_pixels": spec.min_pixels, "max_pixels": spec.max_pixels}
    assert cfg.data.seed == spec.seed

    assert cfg.reward.custom_reward_function.path == str(reward_file_path())
    assert cfg.reward.custom_reward_function.name == "compute_score"
    assert cfg.custom_reward_function.path is None  # the legacy top-level key stays untouched

    model = cfg.actor_rollout_ref.model
    assert model.path == (paths.model_path or spec.model)
    assert model.enable_gradient_checkpointing == spec.gradient_checkpointing
    actor = cfg.actor_rollout_ref.actor
    assert actor.optim.lr == pytest.approx(spec.learning_rate)
    assert actor.ppo_mini_batch_size == spec.ppo_mini_batch_size
    assert actor.ppo_micro_batch_size_per_gpu == spec.micro_batch_size_per_gpu
    assert actor.use_kl_loss == (spec.kl_coef > 0)
    assert actor.kl_loss_coef == pytest.approx(spec.kl_coef)
    assert actor.kl_loss_type == spec.kl_type
    assert actor.fsdp_config.param_offload == spec.param_offload
    assert actor.rollout_n == spec.rollout_n  # interpolated from the rollout section
    rollout = cfg.actor_rollout_ref.rollout
    assert rollout.name == "vllm"
    assert rollout.n == spec.rollout_n
    assert rollout.tensor_model_parallel_size == spec.tensor_parallel_size
    assert rollout.gpu_memory_utilization == pytest.approx(spec.gpu_memory_utilization)
    assert rollout.temperature == pytest.approx(spec.temperature)
    assert rollout.prompt_length == spec.max_prompt_length and rollout.response_length == spec.max_response_length
    if spec.use_lora:
        assert (model.lora_rank, model.lora_alpha) == (spec.lora_rank, spec.lora_alpha)
        assert model.target_modules == "all-linear" and model.exclude_modules == ".*visual.*"
    else:
        assert model.lora_rank == 0

    trainer = cfg.trainer
    assert trainer.default_local_dir == paths.checkpoint_dir
    assert trainer.resume_mode == "auto"
    assert (trainer.n_gpus_per_node, trainer.nnodes) == (spec.gpus_per_node, spec.nnodes)
    assert trainer.save_freq == spec.save_freq and trainer.save_freq > 0
    assert trainer.test_freq == spec.test_freq
    expected_epochs = max(spec.total_epochs, spec.total_steps) if spec.total_steps else spec.total_epochs
    assert trainer.total_epochs == expected_epochs
    assert trainer.total_training_steps == spec.total_steps
    assert trainer.max_actor_ckpt_to_keep == spec.max_checkpoints_to_keep
    assert trainer.use_v1 is True
    assert rollout.max_model_len == spec.max_prompt_length + spec.max_response_length
    assert cfg.data.val_max_samples == spec.val_max_samples
    assert cfg.data.filter_overlong_prompts_workers > 1
    assert list(trainer.logger) == spec.logger
    assert (trainer.project_name, trainer.experiment_name) == (spec.project_name, spec.experiment_name)

    _verl_validate(cfg)  # VeRL's own checks, as main_ppo runs them before starting Ray


def test_overrides_set_from_the_command_line_reach_verl(tmp_path: Path) -> None:
    spec = get_preset("qwen2.5-vl-7b").with_overrides(
        ["rollout_n=8", "logger=console,wandb", "total_steps=50", "kl_coef=0", "lora_rank=16", "lora_alpha=32"]
    )
    cfg = _compose(render_overrides(spec, RunPaths.for_work_dir(tmp_path, spec)))
    assert cfg.actor_rollout_ref.rollout.n == 8
    assert list(cfg.trainer.logger) == ["console", "wandb"]
    assert cfg.trainer.total_training_steps == 50
    assert cfg.actor_rollout_ref.actor.use_kl_loss is False
    assert cfg.actor_rollout_ref.model.lora_rank == 16
    _verl_validate(cfg)


@pytest.mark.parametrize(
    "change",
    [
        {"train_batch_size": 127, "ppo_mini_batch_size": 127},  # 127*5 over 8 GPUs
        {"train_batch_size": 16, "ppo_mini_batch_size": 32},  # mini-batch larger than the batch
    ],
)
def test_spec_validation_refuses_what_verl_refuses(change: dict, tmp_path: Path) -> None:
    bad = dataclasses.replace(get_preset("qwen2.5-vl-7b"), **change)
    with pytest.raises(ValueError):
        bad.validate()
    # bypass our validation: VeRL itself rejects the same config (after composing fine)
    raw = [f"{k}={hydra_value(v)}" for k, v in override_items(bad, RunPaths.for_work_dir(tmp_path, bad))]
    cfg = _compose(raw)
    with pytest.raises((AssertionError, ValueError)):
        _verl_validate(cfg)


def test_packaged_reward_loads_through_verls_loader(tmp_path: Path) -> None:
    from verl.experimental.reward_loop import migrate_legacy_reward_impl
    from verl.trainer.ppo.reward import get_custom_reward_fn

    from grounding_ops.protocols import get_protocol

    spec = get_preset("qwen2.5-vl-3b")
    cfg = _compose(render_overrides(spec, RunPaths.for_work_dir(tmp_path, spec)))
    cfg = migrate_legacy_reward_impl(cfg)  # what VeRL's reward loop does first
    reward_fn = get_custom_reward_fn(cfg)
    assert reward_fn is not None

    box, image_size, resized = [40, 30, 200, 180], [640, 480], [644, 476]
    ground_truth = {"boxes": [box], "protocol": spec.protocol, "image_size": image_size, "resized_size": resized}
    perfect = get_protocol(spec.protocol).format_answer([box], image_size, resized)
    good = reward_fn(data_source="grounding/demo", solution_str=perfect, ground_truth=ground_truth, extra_info={})
    bad = reward_fn(data_source="grounding/demo", solution_str="no box here", ground_truth=ground_truth, extra_info={})
    assert good["score"] > 0.9 and good["iou"] > 0.9
    assert bad["score"] < 0.1


def test_lora_targets_the_language_model_only(tmp_path: Path) -> None:
    """The composed LoRA settings, through VeRL's model config into PEFT, leave the vision tower alone."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForImageTextToText
    from verl.utils.config import omega_conf_to_dataclass
    from verl.utils.py_functional import convert_to_regular_types

    from grounding_ops.tiny_models import build_tiny_model

    model_dir = build_tiny_model(tmp_path / "tiny", family="qwen2.5-vl")
    spec = get_preset("qwen2.5-vl-7b-lora").with_overrides([f"model={model_dir}"])
    cfg = _compose(render_overrides(spec, RunPaths.for_work_dir(tmp_path, spec)))
    model_cfg = omega_conf_to_dataclass(cfg.actor_rollout_ref.model)  # VeRL's HFModelConfig checks

    def adapted(exclude) -> list[str]:
        model = AutoModelForImageTextToText.from_pretrained(str(model_dir))
        lora = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=model_cfg.lora_rank,
            lora_alpha=model_cfg.lora_alpha,
            target_modules=convert_to_regular_types(model_cfg.target_modules),
            exclude_modules=exclude,
            bias="none",
        )
        peft_model = get_peft_model(model, lora)
        return [n for n, _ in peft_model.named_modules() if n.endswith(".lora_A")]

    ours = adapted(convert_to_regular_types(model_cfg.exclude_modules))
    assert ours and not [n for n in ours if ".visual." in n]
    assert any(".language_model." in n for n in ours)
    # without the exclusion "all-linear" would adapt the vision tower too: the exclusion matters
    assert [n for n in adapted(None) if ".visual." in n]


def test_spec_round_trip_matches_composition(tmp_path: Path) -> None:
    spec = get_preset("qwen2.5-vl-7b-2node")
    again = TrainingSpec.from_dict(spec.to_dict())
    a = render_overrides(spec, RunPaths.for_work_dir(tmp_path, spec))
    b = render_overrides(again, RunPaths.for_work_dir(tmp_path, again))
    assert a == b
    assert os.path.isfile(_compose(a).reward.custom_reward_function.path)
