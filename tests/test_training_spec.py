"""TrainingSpec, presets, --set parsing, VeRL override rendering and the train CLI (no torch here)."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from grounding_ops.cli import main as cli_main
from grounding_ops.testing import write_verl_step
from grounding_ops.training.presets import PRESET_NAMES, get_preset
from grounding_ops.training.spec import TrainingSpec
from grounding_ops.training import checkpoints as ckpt
from grounding_ops.training.verl_engine import (
    actor_has_model,
    merge_command,
    parse_log_line,
    trainer_command,
)
from grounding_ops.training.verl_overrides import (
    FORBIDDEN_KEY_PREFIXES,
    RunPaths,
    hydra_value,
    render_overrides,
    reward_file_path,
)


def _refused(spec: TrainingSpec, *fragments: str, engine: str | None = None) -> str:
    with pytest.raises(ValueError) as info:
        spec.validate(engine=engine)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def _overrides(spec: TrainingSpec, tmp_path) -> dict[str, str]:
    lines = render_overrides(spec, RunPaths.for_work_dir(tmp_path, spec))
    return dict(line.split("=", 1) for line in lines)


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_validates_and_round_trips(name: str) -> None:
    spec = get_preset(name)
    assert spec.validate() is spec
    again = TrainingSpec.from_dict(json.loads(spec.to_json()))
    assert again == spec


def test_preset_hardware_layouts() -> None:
    assert (get_preset("qwen2.5-vl-3b").gpus_per_node, get_preset("qwen2.5-vl-3b").nnodes) == (8, 1)
    assert (get_preset("qwen2.5-vl-7b").gpus_per_node, get_preset("qwen2.5-vl-7b").nnodes) == (8, 1)
    lora = get_preset("qwen2.5-vl-7b-lora")
    assert lora.n_gpus <= 2 and lora.lora_rank > 0
    assert get_preset("qwen2.5-vl-7b-2node").n_gpus == 16
    tiny = get_preset("tiny-cpu")
    assert tiny.engine == "cpu" and tiny.sft_warmup_steps > 0
    # the LoRA preset also fits one GPU
    get_preset("qwen2.5-vl-7b-lora").with_overrides(["gpus_per_node=1"]).validate()


def test_unknown_preset_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="qwen2.5-vl-7b-lora"):
        get_preset("qwen-huge")


def test_get_preset_returns_independent_copies() -> None:
    a = get_preset("qwen2.5-vl-7b")
    a.logger.append("wandb")
    assert get_preset("qwen2.5-vl-7b").logger == ["console"]


def test_runtime_only_verl_errors_are_caught_early() -> None:
    base = get_preset("qwen2.5-vl-7b")  # 8 GPUs
    _refused(dataclasses.replace(base, rollout_n=1), "rollout_n must be >= 2 for GRPO")
    # 127 * 5 = 635 is not divisible by 8 GPUs
    _refused(
        dataclasses.replace(base, train_batch_size=127, ppo_mini_batch_size=127),
        "635",
        "divisible by the number of GPUs (8x1 = 8)",
    )
    # mini-batch 36*5 = 180 not divisible by 8
    _refused(
        dataclasses.replace(base, ppo_mini_batch_size=36, train_batch_size=144),
        "ppo_mini_batch_size*rollout_n = 36*5 = 180",
    )
    # per-GPU mini-batch 20 is not a multiple of micro 8
    _refused(
        dataclasses.replace(base, micro_batch_size_per_gpu=8), "per-GPU mini-batch", "micro_batch_size_per_gpu (8)"
    )
    _refused(
        dataclasses.replace(base, tensor_parallel_size=3), "tensor_parallel_size (3) must divide gpus_per_node (8)"
    )
    _refused(dataclasses.replace(base, ppo_mini_batch_size=256), "must be <= train_batch_size")
    _refused(dataclasses.replace(base, gpu_memory_utilization=1.5), "gpu_memory_utilization must be in (0, 1]")
    _refused(dataclasses.replace(base, learning_rate=0.0), "learning_rate must be in (0, 1)")
    _refused(dataclasses.replace(base, lora_rank=64, lora_alpha=0), "lora_alpha must be > 0")
    _refused(dataclasses.replace(base, lora_rank=4, lora_alpha=512), "lora_alpha/lora_rank")
    _refused(dataclasses.replace(base, max_prompt_length=512), "max_prompt_length (512) cannot hold an image")
    _refused(dataclasses.replace(base, min_pixels=2_000_000), "min_pixels (2000000) must be <= max_pixels")
    _refused(dataclasses.replace(base, protocol="pixels"), "protocol 'pixels' is unknown", "qwen2.5-vl")
    _refused(dataclasses.replace(base, model_family="llava"), "model_family 'llava' is unknown")
    _refused(dataclasses.replace(base, logger=["console", "slack"]), "logger ['slack'] not supported")
    _refused(dataclasses.replace(base, save_freq=0), "save_freq must be a positive number of steps or -1")
    _refused(dataclasses.replace(base, model=" "), "model is empty")


def test_all_problems_are_reported_together() -> None:
    spec = dataclasses.replace(get_preset("qwen2.5-vl-7b"), rollout_n=1, tensor_parallel_size=3, kl_type="kl9")
    message = _refused(spec, "rollout_n", "tensor_parallel_size", "kl_type 'kl9'")
    assert message.count("\n  - ") >= 3


def test_gpu_layout_checks_apply_to_the_verl_engine_only() -> None:
    # 7 prompts * 3 rollouts do not split over 8 GPUs, but the CPU engine has no GPUs to split over
    spec = dataclasses.replace(
        get_preset("tiny-cpu"),
        gpus_per_node=8,
        train_batch_size=7,
        ppo_mini_batch_size=7,
        rollout_n=3,
        micro_batch_size_per_gpu=3,
    )
    spec.validate(engine="cpu")
    _refused(spec, "divisible by the number of GPUs", engine="verl")


def test_with_overrides_parses_types() -> None:
    spec = get_preset("qwen2.5-vl-7b").with_overrides(
        [
            "rollout_n=8",
            "learning_rate=2e-6",
            "logger=console,wandb",
            "total_steps=100",
            "param_offload=yes",
            "model=s3://models/qwen=7b",  # only the first '=' separates key and value
            "experiment_name= exp-1 ",
        ]
    )
    assert spec.rollout_n == 8 and spec.learning_rate == 2e-6
    assert spec.logger == ["console", "wandb"]
    assert spec.total_steps == 100 and spec.param_offload is True
    assert spec.model == "s3://models/qwen=7b"
    assert spec.experiment_name == "exp-1"
    assert spec.with_overrides(["total_steps=none"]).total_steps is None
    assert spec.with_overrides(["logger=[console]"]).logger == ["console"]
    # the preset itself is untouched
    assert get_preset("qwen2.5-vl-7b").rollout_n == 5


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("rolout_n=8", "unknown spec key 'rolout_n'; valid keys: "),
        ("rollout_n=eight", "rollout_n must be an integer"),
        ("rollout_n=2.5", "rollout_n must be an integer"),
        ("learning_rate=fast", "learning_rate must be a number"),
        ("param_offload=maybe", "param_offload must be a boolean (true/false)"),
        ("total_steps=lots", "total_steps must be an integer or none"),
        ("rollout_n", "must look like key=value"),
        ("=3", "must look like key=value"),
    ],
)
def test_with_overrides_refuses_bad_items(item: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        get_preset("qwen2.5-vl-7b").with_overrides([item])
    assert message in str(info.value)


def test_from_dict_refuses_unknown_keys_and_wrong_types() -> None:
    data = get_preset("tiny-cpu").to_dict()
    with pytest.raises(ValueError, match="unknown spec keys \\['colour'\\]"):
        TrainingSpec.from_dict({**data, "colour": "red"})
    with pytest.raises(ValueError, match="rollout_n"):
        TrainingSpec.from_dict({**data, "rollout_n": [4]})
    with pytest.raises(ValueError, match="no 'model'"):
        TrainingSpec.from_dict({k: v for k, v in data.items() if k != "model"})


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_overrides_have_the_required_keys_and_none_forbidden(name: str, tmp_path) -> None:
    spec = get_preset(name)
    ov = _overrides(spec, tmp_path)
    assert ov["algorithm.adv_estimator"] == "grpo"
    assert ov["reward.custom_reward_function.path"] == str(reward_file_path())
    assert reward_file_path().name == "verl_reward.py" and reward_file_path().is_file()
    assert ov["reward.custom_reward_function.name"] == "compute_score"
    assert ov["data.image_key"] == "images"
    assert ov["data.train_files"] == str(tmp_path / "data" / "train.parquet")
    assert ov["data.val_files"] == str(tmp_path / "data" / "val.parquet")
    assert ov["data.filter_overlong_prompts"] == "true"
    assert ov["actor_rollout_ref.rollout.name"] == "vllm"
    assert ov["actor_rollout_ref.rollout.n"] == str(spec.rollout_n)
    assert ov["actor_rollout_ref.rollout.tensor_model_parallel_size"] == str(spec.tensor_parallel_size)
    expected_checkpoints = (
        Path(spec.shared_dir) / spec.experiment_name if spec.nnodes > 1 else tmp_path
    ) / "checkpoints"
    assert ov["trainer.default_local_dir"] == str(expected_checkpoints)
    assert ov["trainer.resume_mode"] == "auto"
    assert ov["trainer.n_gpus_per_node"] == str(spec.gpus_per_node)
    assert ov["trainer.nnodes"] == str(spec.nnodes)
    for key in ov:
        bare = key.lstrip("+")
        assert not bare.startswith(FORBIDDEN_KEY_PREFIXES), key
        # the draft guide's invalid keys, spelled out
        assert not re.match(
            r"^(reward_model\.path|model\.backend|megatron\.|data\.enable_sequence_balance|custom_reward_function\.)",
            bare,
        )
        assert ".peft." not in bare
    if spec.use_lora:
        assert ov["actor_rollout_ref.model.lora_rank"] == str(spec.lora_rank)
        assert ov["actor_rollout_ref.model.lora_alpha"] == str(spec.lora_alpha)
        assert ov["actor_rollout_ref.model.target_modules"] == "all-linear"
        assert re.fullmatch(ov["actor_rollout_ref.model.exclude_modules"].strip("'"), "model.visual.blocks.0.attn.qkv")
        assert not re.fullmatch(
            ov["actor_rollout_ref.model.exclude_modules"].strip("'"), "model.language_model.layers.0.self_attn.q_proj"
        )
    else:
        assert not any("lora" in key for key in ov)


def test_remote_models_need_a_local_copy(tmp_path) -> None:
    spec = get_preset("qwen2.5-vl-7b").with_overrides(["model=s3://bucket/models/qwen"])
    ov = _overrides(spec, tmp_path)
    assert ov["actor_rollout_ref.model.path"] == str(tmp_path / "model")
    with pytest.raises(ValueError, match="download it first"):
        render_overrides(spec, RunPaths(train_file="t.parquet", val_file=None, checkpoint_dir="c"))


def test_total_steps_and_missing_validation_set(tmp_path) -> None:
    spec = get_preset("qwen2.5-vl-3b").with_overrides(["total_steps=7"])
    lines = render_overrides(
        spec, RunPaths(train_file=str(tmp_path / "t.parquet"), val_file=None, checkpoint_dir=str(tmp_path))
    )
    ov = dict(line.split("=", 1) for line in lines)
    assert ov["trainer.total_training_steps"] == "7"
    assert ov["trainer.test_freq"] == "-1" and ov["trainer.val_before_train"] == "false"
    assert "trainer.total_training_steps" not in _overrides(get_preset("qwen2.5-vl-3b"), tmp_path)


def test_hydra_value_quoting() -> None:
    assert hydra_value("/data/train.parquet") == "/data/train.parquet"
    assert hydra_value("/my data/it's.parquet") == "'/my data/it\\'s.parquet'"
    assert hydra_value("a,b") == "'a,b'"
    assert hydra_value("true") == "'true'" and hydra_value("1e-6") == "'1e-6'"
    assert hydra_value(["console", "wandb"]) == "[console,wandb]"
    assert hydra_value(None) == "null" and hydra_value(False) == "false" and hydra_value(1e-06) == "1e-06"


def test_print_overrides_cli(capsys, tmp_path) -> None:
    rc = cli_main(
        [
            "train",
            "--preset",
            "qwen2.5-vl-7b-lora",
            "--set",
            "rollout_n=8",
            "--set",
            "logger=console,wandb",
            "--print-overrides",
            "--work-dir",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.splitlines()
    spec = get_preset("qwen2.5-vl-7b-lora").with_overrides(["rollout_n=8", "logger=console,wandb"])
    assert lines == render_overrides(spec, RunPaths.for_work_dir(tmp_path, spec))
    assert "actor_rollout_ref.rollout.n=8" in lines
    assert "trainer.logger=[console,wandb]" in lines


def test_train_cli_reports_bad_settings_without_traceback(tmp_path) -> None:
    # the installed console script, as a user (or the container) runs it
    script = [sys.executable, "-c", "import sys; from grounding_ops.cli import main; sys.exit(main())"]
    bad = subprocess.run(
        [*script, "train", "--preset", "qwen2.5-vl-7b", "--set", "rollout_n=1", "--print-overrides"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2, bad.stderr
    assert "rollout_n must be >= 2 for GRPO" in bad.stderr and "Traceback" not in bad.stderr
    unknown = subprocess.run(
        [*script, "train", "--preset", "qwen2.5-vl-7b", "--set", "colour=red", "--print-overrides"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert unknown.returncode == 2 and "unknown spec key 'colour'" in unknown.stderr
    missing = subprocess.run([*script, "train", "--preset", "tiny-cpu"], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "--dataset and --output required" in missing.stderr
    bad_preset = subprocess.run(
        [*script, "train", "--preset", "nope", "--print-overrides"], capture_output=True, text=True, timeout=120
    )
    assert bad_preset.returncode == 2 and "qwen2.5-vl-7b" in bad_preset.stderr


def test_cli_import_stays_light() -> None:
    code = (
        "import sys; import grounding_ops.training.cli, grounding_ops.training.verl_overrides, "
        "grounding_ops.training.verl_engine, grounding_ops.training.ray_jobs, grounding_ops.training.presets; "
        "heavy = [m for m in ('torch', 'transformers', 'verl', 'ray', 'hydra') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_verl_commands_and_checkpoint_discovery(tmp_path) -> None:
    cmd = trainer_command(["a=1", "b='x y'"], python="py")
    assert cmd == ["py", "-m", "verl.trainer.main_ppo", "a=1", "b='x y'"]
    merge = merge_command(tmp_path / "global_step_4", tmp_path / "hf", python="py", exclude_modules=".*visual.*")
    assert merge == [
        "py",
        "-m",
        "grounding_ops.training.verl_merge",
        "--step-dir",
        str(tmp_path / "global_step_4"),
        "--target",
        str(tmp_path / "hf"),
        "--exclude-modules",
        ".*visual.*",
    ]
    assert ckpt.latest_local_checkpoint(tmp_path / "absent", actor_has_model) is None
    for step in (2, 10, 4):
        write_verl_step(tmp_path, step)
    (tmp_path / "global_step_12").mkdir()  # incomplete: no actor folder
    write_verl_step(tmp_path, 14, world_size=2, ranks=(0,))  # another node's shard is elsewhere
    rotated = write_verl_step(tmp_path, 1)
    for shard in (rotated / "actor").glob("model_world_size_*"):  # verl's rotation: actor/ emptied, data.pt kept
        shard.unlink()
    assert ckpt.local_complete_steps(tmp_path, actor_has_model) == [2, 4, 10]
    assert ckpt.latest_local_checkpoint(tmp_path, actor_has_model) == (10, tmp_path / "global_step_10")
    (tmp_path / ckpt.TRACKER_FILE).write_text("4\n")  # VeRL resumes from the step its tracker names
    assert ckpt.latest_local_checkpoint(tmp_path, actor_has_model) == (4, tmp_path / "global_step_4")


def test_parse_verl_console_lines() -> None:
    line = (
        "(TaskRunner pid=4242) step:3 - actor/kl_loss:np.float64(0.0012) - actor/pg_loss:-0.02 - "
        "critic/score/mean:0.412 - critic/rewards/mean:0.41 - perf/throughput:1520.3 - "
        "perf/time_per_step:12.34 - val-aux/grounding/refcoco/iou/mean@5:0.38 - "
        "val-core/grounding/refcoco/acc/mean@5:0.31 - training/epoch:0"
    )
    m = parse_log_line("\x1b[36m" + line + "\x1b[0m")
    assert m is not None and m.step == 3
    assert (m.reward_mean, m.val_iou, m.val_acc, m.kl, m.throughput, m.seconds_per_step) == (
        0.412,
        0.38,
        0.31,
        0.0012,
        1520.3,
        12.34,
    )
    assert (
        m.summary()
        == "step 3 | reward 0.412 | val IoU 0.380 | val acc 0.310 | KL 0.0012 | 1520 tok/s/GPU | 12.3 s/step"
    )
    # IoU and acc exist only as validation metrics: the run record names them so
    assert {"val_iou", "val_acc"} <= set(m.to_dict()) and not {"iou", "acc"} & set(m.to_dict())
    assert m.values["actor/pg_loss"] == -0.02
    plain = parse_log_line("step:1 - critic/score/mean:0.0 - training/global_step:1 - critic/iou/mean:0.5")
    assert plain is not None and plain.val_iou is None and plain.summary() == "step 1 | reward 0.000"
    for other in ("step:1", "Training Progress:  10%", "global_step:3", "INFO worker step: 3 done", ""):
        assert parse_log_line(other) is None, other
