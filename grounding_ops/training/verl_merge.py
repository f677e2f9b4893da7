"""One VeRL checkpoint step -> one Hugging Face model folder, LoRA merged in.

``verl.model_merger`` (0.9.1) turns the FSDP shards of ``global_step_N/actor`` into a Hugging
Face folder, but with LoRA it writes the adapter to ``<target>/lora_adapter/`` and saves the
*unmerged base weights* as the model. Publishing that folder would publish the base model. So
:func:`merge_step` runs verl's merger in-process and then, when an adapter is there, merges it
into the weights with PEFT (``merge_and_unload``) and removes the adapter folder: the result is
the trained model, loadable by ``from_pretrained`` and vLLM alike.

The runner calls it as a subprocess (the model is loaded in that process, not the runner's):
``python -m grounding_ops.training.verl_merge --step-dir DIR/global_step_N --target OUT``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

LORA_ADAPTER_DIR = "lora_adapter"


class MergeError(RuntimeError):
    """The checkpoint could not be turned into a model folder; the message says why."""


def merge_step(step_dir: str | Path, target: str | Path, *, exclude_modules: str | None = None) -> Path:
    """Merge ``<step_dir>/actor`` into ``target`` (a Hugging Face folder with the trained weights)."""
    from verl.model_merger.base_model_merger import ModelMergerConfig
    from verl.model_merger.fsdp_model_merger import FSDPModelMerger

    actor = Path(step_dir) / "actor"
    if not (actor / "fsdp_config.json").is_file():
        raise MergeError(f"{actor} holds no FSDP checkpoint (fsdp_config.json missing)")
    target = Path(target)
    shutil.rmtree(target, ignore_errors=True)
    config = ModelMergerConfig(
        operation="merge",
        backend="fsdp",
        local_dir=str(actor),
        target_dir=str(target),
        hf_model_config_path=str(actor / "huggingface"),
    )
    FSDPModelMerger(config).merge_and_save()
    adapter = target / LORA_ADAPTER_DIR
    if adapter.is_dir():
        merge_lora_adapter(target, adapter, exclude_modules=exclude_modules)
    if not (target / "config.json").is_file():
        raise MergeError(f"the merge of {actor} wrote no config.json into {target}")
    return target


def merge_lora_adapter(model_dir: str | Path, adapter_dir: str | Path, *, exclude_modules: str | None = None) -> Path:
    """Fold the PEFT adapter in ``adapter_dir`` into the weights of ``model_dir`` (in place)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    model_dir, adapter_dir = Path(model_dir), Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text())
    if not adapter_config.get("lora_alpha"):
        raise MergeError(
            f"{config_path} has lora_alpha={adapter_config.get('lora_alpha')!r} (the checkpoint's "
            "lora_train_meta.json is missing): merging would scale the adapter by 0 and publish the base model"
        )
    if exclude_modules and not adapter_config.get("exclude_modules"):
        # verl writes target_modules as leaf names (q_proj, gate_proj, ...): the vision tower has some of
        # them too, and PEFT would wrap those modules with adapters it has no weights for.
        adapter_config["exclude_modules"] = exclude_modules
        config_path.write_text(json.dumps(adapter_config, indent=2))
    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.bfloat16)
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    merged = peft_model.merge_and_unload()
    staging = model_dir.with_name(model_dir.name + ".merged")
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(str(staging))
    for old in model_dir.glob("model*.safetensors*"):
        old.unlink()
    for path in staging.iterdir():
        shutil.move(str(path), str(model_dir / path.name))
    staging.rmdir()
    shutil.rmtree(adapter_dir)
    return model_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grounding_ops.training.verl_merge", description=__doc__)
    parser.add_argument("--step-dir", required=True, help="a global_step_N folder written by VeRL")
    parser.add_argument("--target", required=True, help="the Hugging Face folder to write")
    parser.add_argument("--exclude-modules", default=None, help="PEFT exclude_modules regex of the training run")
    args = parser.parse_args(argv)
    try:
        merge_step(args.step_dir, args.target, exclude_modules=args.exclude_modules)
    except (MergeError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"merged {args.step_dir} into {args.target}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
