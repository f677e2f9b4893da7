"""Writes real verl 0.9.1 FSDP checkpoints on CPU, for the runner and merge tests.

``python verl_checkpoint_writer.py key=value ...`` takes the Hydra overrides the runner renders
and stands in for ``verl.trainer.main_ppo`` (whose rollouts need vLLM on a GPU): it loads the
model (with the rendered LoRA settings through PEFT), wraps it with FSDP2 on a one-rank gloo
group and saves ``global_step_N/actor`` with verl's own ``FSDPCheckpointManager`` at the steps
verl's rule picks (``save_freq``, the last step), rotating with ``max_actor_ckpt_to_keep`` as
verl does, then ``data.pt`` and the tracker file, and prints verl's console line per step.
The weights are changed between steps so each checkpoint differs from the base model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _overrides(argv: list[str]) -> dict[str, str]:
    out = {}
    for item in argv:
        key, _, value = item.partition("=")
        out[key.lstrip("+")] = value.strip("'")
    return out


def main(argv: list[str]) -> int:
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager

    ov = _overrides(argv)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist.init_process_group("gloo", rank=0, world_size=1)
    model_path = ov["actor_rollout_ref.model.path"]
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(model_path)
    rank = int(ov.get("actor_rollout_ref.model.lora_rank", "0") or 0)
    if rank > 0:
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                task_type=TaskType.CAUSAL_LM,
                r=rank,
                lora_alpha=int(ov["actor_rollout_ref.model.lora_alpha"]),
                target_modules=ov["actor_rollout_ref.model.target_modules"],
                exclude_modules=ov["actor_rollout_ref.model.exclude_modules"],
                init_lora_weights=False,
            ),
        )
    fully_shard(model, mesh=init_device_mesh("cpu", (1,), mesh_dim_names=("fsdp",)))
    manager = FSDPCheckpointManager(
        model=model,
        optimizer=None,
        lr_scheduler=None,
        processing_class=AutoProcessor.from_pretrained(model_path),
        checkpoint_config={"save_contents": ["model"], "load_contents": ["model"]},
    )
    root = Path(ov["trainer.default_local_dir"])
    total = int(ov["trainer.total_training_steps"])
    save_freq = int(ov["trainer.save_freq"])
    keep = int(ov.get("trainer.max_actor_ckpt_to_keep", "0") or 0) or None
    tracker = root / "latest_checkpointed_iteration.txt"
    start = int(tracker.read_text()) if tracker.is_file() else 0
    for step in range(start + 1, total + 1):
        with torch.no_grad():  # a "training step": every trainable weight moves
            for param in model.parameters():
                if param.requires_grad:
                    param.add_(0.01)
        val = " - val-aux/grounding/synthetic/iou/mean@1:0.25 - val-core/grounding/synthetic/acc/mean@1:0.5"
        print(
            f"step:{step} - critic/score/mean:0.{step} - actor/kl_loss:0.001 - perf/time_per_step:0.1"
            + (val if step == total else ""),
            flush=True,
        )
        if save_freq > 0 and (step >= total or step % save_freq == 0):
            step_dir = root / f"global_step_{step}"
            manager.save_checkpoint(str(step_dir / "actor"), global_step=step, max_ckpt_to_keep=keep)
            torch.save({"dataloader": step}, step_dir / "data.pt")
            tracker.write_text(str(step))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
