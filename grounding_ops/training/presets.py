"""Named training presets: the choices offered in the Airflow form and ``--preset``.

Every preset validates as is; ``--set key=value`` adjusts one for a run. GPU presets name a
Hugging Face model id (the GPU node must reach the hub or have it cached); point ``model`` at a
local folder or an ``s3://`` copy for air-gapped clusters.

``tiny-cpu`` runs the CPU engine on a tiny random model: its ``model`` is ``tiny:<family>``,
meaning "build one locally with ``grounding_ops.tiny_models.build_tiny_model``" (override with a
folder or ``s3://`` URI of a model built by ``grounding-ops tiny-model``).
"""

from __future__ import annotations

from dataclasses import replace

from grounding_ops.training.spec import TrainingSpec
from grounding_ops.vocabulary import DEFAULT_TRAIN_PRESET, DEMO_TRAIN_PRESET

TINY_MODEL_SCHEME = "tiny:"
# Where the multi-node preset expects a folder shared by all nodes (override with --set shared_dir=...).
SHARED_DIR = "/shared/grounding-ops"


def _presets() -> dict[str, TrainingSpec]:
    # Qwen2.5-VL-3B on one node of 8 GPUs, full fine-tuning.
    qwen25_3b = TrainingSpec(
        model="Qwen/Qwen2.5-VL-3B-Instruct",
        model_family="qwen2.5-vl",
        protocol="qwen2.5-vl",
        rollout_n=5,
        learning_rate=1e-6,
        kl_coef=0.01,
        train_batch_size=128,
        ppo_mini_batch_size=32,  # 32*5/8 = 20 per GPU
        micro_batch_size_per_gpu=4,
        max_prompt_length=2048,
        max_response_length=256,
        total_epochs=2,
        save_freq=20,
        test_freq=10,
        gpus_per_node=8,
        nnodes=1,
        tensor_parallel_size=1,
        gpu_memory_utilization=0.6,
        experiment_name="qwen2.5-vl-3b-grpo",
    )
    # Qwen2.5-VL-7B on one node of 8 GPUs, full fine-tuning.
    qwen25_7b = replace(
        qwen25_3b,
        model="Qwen/Qwen2.5-VL-7B-Instruct",
        micro_batch_size_per_gpu=2,
        tensor_parallel_size=2,
        gpu_memory_utilization=0.5,
        experiment_name="qwen2.5-vl-7b-grpo",
    )
    # CPU engine (TRL) on a tiny random Qwen2-VL: laptops, CI and the demo. On the synthetic shapes
    # (112-pixel images, 4x4 visual tokens) a short supervised warm-up teaches the answer format, then
    # GRPO on the IoU reward; cheap enough for every test that trains.
    tiny_cpu = TrainingSpec(
        model=TINY_MODEL_SCHEME + "qwen2-vl",
        model_family="qwen2-vl",
        protocol="qwen2.5-vl",
        engine="cpu",
        rollout_n=4,
        learning_rate=1e-4,
        kl_coef=0.0,
        temperature=1.0,
        train_batch_size=4,
        ppo_mini_batch_size=4,
        micro_batch_size_per_gpu=4,
        max_prompt_length=256,
        max_response_length=40,  # a JSON box answer is 30-34 tokens
        total_epochs=1,
        total_steps=30,
        save_freq=10,
        test_freq=-1,
        gpus_per_node=1,
        nnodes=1,
        tensor_parallel_size=1,
        gpu_memory_utilization=0.5,
        gradient_checkpointing=False,
        min_pixels=3136,  # 56x56
        max_pixels=12544,  # 112x112
        experiment_name=DEFAULT_TRAIN_PRESET,
        sft_warmup_steps=100,  # fewer leave almost no parseable answer: zero reward, no GRPO signal
    )
    learning = replace(
        tiny_cpu,
        rollout_n=8,
        learning_rate=5e-4,
        train_batch_size=8,
        ppo_mini_batch_size=8,
        micro_batch_size_per_gpu=16,
        total_steps=450,
        save_freq=150,
        experiment_name="tiny-cpu-grpo",
        # Deliberately partial: the base reads the image somewhat (mean IoU ~0.25 on held-out
        # samples, the best fixed box ~0.22) and GRPO earns the rest (~0.35 after 450 steps).
        sft_warmup_steps=2500,
    )
    return {
        "qwen2.5-vl-3b": qwen25_3b,
        "qwen2.5-vl-7b": qwen25_7b,
        # Qwen2.5-VL-7B with LoRA on the language model, 2 GPUs (set gpus_per_node=1 for one).
        "qwen2.5-vl-7b-lora": replace(
            qwen25_7b,
            rollout_n=4,
            learning_rate=1e-5,
            train_batch_size=16,
            ppo_mini_batch_size=8,  # 8*4/2 = 16 per GPU
            micro_batch_size_per_gpu=4,
            max_prompt_length=1536,
            gpus_per_node=2,
            tensor_parallel_size=1,
            gpu_memory_utilization=0.4,
            param_offload=True,
            lora_rank=64,
            lora_alpha=64,
            max_pixels=802816,  # 1024 visual tokens
            experiment_name="qwen2.5-vl-7b-lora-grpo",
        ),
        # Qwen2.5-VL-7B on two nodes of 8 GPUs (submit through Ray Jobs). SHARED_DIR must be
        # mounted at the same path on both nodes: the checkpoints of every rank go there.
        "qwen2.5-vl-7b-2node": replace(
            qwen25_7b,
            train_batch_size=256,
            ppo_mini_batch_size=64,  # 64*5/16 = 20 per GPU
            nnodes=2,
            shared_dir=SHARED_DIR,
            experiment_name="qwen2.5-vl-7b-2node-grpo",
        ),
        DEFAULT_TRAIN_PRESET: tiny_cpu,
        # The learning recipe measured by benchmarks/grpo_gain.py (about 6-8 minutes of training on 2
        # cores, on ~2,000 images): more rollouts, a longer, still partial warm-up, 450 GRPO steps.
        # Too slow for the test suite; tests/ml/test_grpo_gain.py runs a shortened version.
        "tiny-cpu-grpo": learning,
        # The same recipe, a third of the GRPO steps: the embedded services' default (make demo), whose
        # first night then promotes a real gain in about 4 minutes of training.
        DEMO_TRAIN_PRESET: replace(learning, total_steps=150, save_freq=75, experiment_name=DEMO_TRAIN_PRESET),
    }


PRESET_NAMES: tuple[str, ...] = tuple(_presets())


def get_preset(name: str) -> TrainingSpec:
    """A fresh copy of the named preset; ValueError naming the valid presets otherwise."""
    presets = _presets()
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESET_NAMES)}")
    return presets[name]
