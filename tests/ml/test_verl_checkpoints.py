"""VeRL checkpoints on CPU: real FSDP checkpoints written by verl 0.9.1's checkpoint manager
(gloo, one rank), merged by verl's model merger and, with LoRA, by PEFT; and the runner fed
the checkpoint folders the GPU trainer writes, rotation included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("verl")

from grounding_ops.storage import open_store  # noqa: E402
from grounding_ops.training import checkpoints as ckpt  # noqa: E402
from grounding_ops.training.presets import get_preset  # noqa: E402
from grounding_ops.training.verl_overrides import LORA_EXCLUDE_MODULES, RunPaths, render_overrides  # noqa: E402

pytestmark = pytest.mark.ml

WRITER = Path(__file__).with_name("verl_checkpoint_writer.py")


def _spec(model_dir: Path, *extra: str):
    return get_preset("tiny-cpu").with_overrides(
        [
            f"model={model_dir}",
            "engine=verl",
            "gpus_per_node=1",
            "model_family=qwen2.5-vl",
            *extra,
        ]
    )


def _write_checkpoints(spec, root: Path, steps: int) -> None:
    paths = RunPaths(train_file="t.parquet", val_file=None, checkpoint_dir=str(root), model_path=spec.model)
    argv = render_overrides(spec, paths, target_steps=steps)
    result = subprocess.run([sys.executable, str(WRITER), *argv], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for path in folder.glob("*.safetensors"):
        out.update(load_file(str(path)))
    return out


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from grounding_ops.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen25", family="qwen2.5-vl")


def test_full_fine_tuning_checkpoint_merges_to_the_trained_weights(tiny_model: Path, tmp_path: Path) -> None:
    from grounding_ops.training.verl_merge import merge_step

    spec = _spec(tiny_model, "save_freq=1")
    _write_checkpoints(spec, tmp_path / "ckpt", steps=1)
    merged = merge_step(tmp_path / "ckpt" / "global_step_1", tmp_path / "hf")
    base, trained = _weights(tiny_model), _weights(merged)
    assert not (merged / "lora_adapter").exists()
    key = next(k for k in base if k.endswith("q_proj.weight") and "visual" not in k)
    assert (trained[key].float() - (base[key].float() + 0.01)).abs().max() < 0.02  # bf16 of w + 0.01


def test_lora_checkpoint_is_published_merged_not_as_the_base_model(tiny_model: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file
    from verl.model_merger.base_model_merger import ModelMergerConfig
    from verl.model_merger.fsdp_model_merger import FSDPModelMerger

    from grounding_ops.training.verl_merge import merge_step

    spec = _spec(tiny_model, "save_freq=1", "lora_rank=4", "lora_alpha=8")
    _write_checkpoints(spec, tmp_path / "ckpt", steps=1)
    actor = tmp_path / "ckpt" / "global_step_1" / "actor"

    # verl's merger alone: the adapter beside the base weights, which is what would be published
    raw = tmp_path / "raw"
    FSDPModelMerger(
        ModelMergerConfig(
            operation="merge",
            backend="fsdp",
            local_dir=str(actor),
            target_dir=str(raw),
            hf_model_config_path=str(actor / "huggingface"),
        )
    ).merge_and_save()
    base, unmerged = _weights(tiny_model), _weights(raw)
    key = next(k for k in base if k.endswith("q_proj.weight") and "visual" not in k)
    assert torch.allclose(unmerged[key].float(), base[key].to(torch.bfloat16).float())  # the base model
    adapter = load_file(str(raw / "lora_adapter" / "adapter_model.safetensors"))
    config = json.loads((raw / "lora_adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (4, 8)

    merged = merge_step(actor.parent, tmp_path / "hf", exclude_modules=LORA_EXCLUDE_MODULES)
    assert not (merged / "lora_adapter").exists()
    weights = _weights(merged)
    layer = key.rsplit(".weight", 1)[0].split("model.", 1)[-1]  # layers.0.self_attn.q_proj
    lora_a = next(v for k, v in adapter.items() if k.endswith(f"{layer}.lora_A.weight"))
    lora_b = next(v for k, v in adapter.items() if k.endswith(f"{layer}.lora_B.weight"))
    expected = unmerged[key].float() + (8 / 4) * (lora_b.float() @ lora_a.float())
    assert (weights[key].float() - expected).abs().max() < 0.02
    assert (weights[key].float() - unmerged[key].float()).abs().max() > 0.05  # not the base model
    visual = [k for k in weights if "visual" in k and k.endswith("weight")]
    assert visual and all(torch.equal(weights[k], unmerged[k]) for k in visual)  # the vision tower is untouched
    from transformers import AutoModelForImageTextToText

    AutoModelForImageTextToText.from_pretrained(str(merged))  # a plain Hugging Face model


@pytest.mark.slow
def test_runner_uploads_complete_merged_checkpoints_and_skips_rotated_ones(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    from grounding_ops.data.synthetic import publish_synthetic_version
    from grounding_ops.training import verl_engine
    from grounding_ops.training.runner import run_training

    dataset, counts = publish_synthetic_version(
        tmp_path / "data", version="v-verl", n_images=16, seed=3, val_fraction=0.25
    )
    # the GPU trainer's stand-in writes real verl checkpoints where the rendered overrides say
    monkeypatch.setattr(
        verl_engine, "trainer_command", lambda overrides, python=None: [sys.executable, str(WRITER), *overrides]
    )
    spec = _spec(
        tiny_model,
        "save_freq=1",
        "total_steps=3",
        "max_checkpoints_to_keep=1",
        "lora_rank=4",
        "lora_alpha=8",
        "train_batch_size=4",
        "ppo_mini_batch_size=4",
        "max_prompt_length=512",
    )
    output = tmp_path / "run"
    assert (
        run_training(spec, dataset_uri=dataset, output_uri=str(output), engine="verl", work_dir=tmp_path / "work") == 0
    ), capfd.readouterr().err[-3000:]
    logged = capfd.readouterr().out
    run = json.loads((output / "run.json").read_text())
    assert run["steps_done"] == 3 and run["target_steps"] == 3
    assert (
        "trainer.total_training_steps=3" in run["overrides"] and "trainer.max_actor_ckpt_to_keep=1" in run["overrides"]
    )
    assert run["final_metrics"]["val_iou"] == 0.25 and "iou" not in run["final_metrics"]
    uploaded = ckpt.remote_complete_steps(open_store(str(output)))
    assert 3 in uploaded
    for step in uploaded:  # every uploaded checkpoint holds the model and a merged, evaluable HF folder
        folder = output / "checkpoints" / f"global_step_{step}"
        assert (folder / "actor" / "model_world_size_1_rank_0.pt").is_file()
        assert (folder / "huggingface" / "config.json").is_file() and list(
            (folder / "huggingface").glob("*.safetensors")
        )
        assert not (folder / "huggingface" / "lora_adapter").exists()
    rotated = sorted(set(range(1, 4)) - set(uploaded))
    for step in rotated:  # verl's rotation left data.pt without the model: never marked complete
        local = tmp_path / "work" / "checkpoints" / f"global_step_{step}"
        assert (local / "data.pt").is_file() and not list(local.glob("actor/model_world_size_*"))
    print("rotated before upload:", rotated, [line for line in logged.splitlines() if "rotated away" in line])
    assert not (output / "final" / "lora_adapter").exists()
    final, base = _weights(output / "final"), _weights(tiny_model)
    key = next(k for k in base if k.endswith("q_proj.weight") and "visual" not in k)
    assert (final[key].float() - base[key].float()).abs().max() > 0.05  # the LoRA-trained model, not the base
