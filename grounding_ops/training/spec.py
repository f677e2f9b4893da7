"""The typed training spec: one dataclass that both engines (VeRL on GPUs, TRL on CPU) read.

``TrainingSpec.validate()`` refuses, with a message saying what to change, the combinations
VeRL would only reject after minutes of Ray start-up and model loading (batch sizes that do not
split over the GPUs, GRPO with a single rollout, tensor parallelism that does not divide a node).

``TrainingSpec.with_overrides(["rollout_n=8", "logger=console,wandb"])`` applies the typed
``--set key=value`` overrides of the command line; ``to_dict()``/``from_dict()`` round-trip the
spec through JSON (``run.json`` records it).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from grounding_ops.data.vision import RESIZE_FACTORS, family_protocol_problem
from grounding_ops.vocabulary import TRAINING_ENGINES

MODEL_FAMILIES: tuple[str, ...] = ("qwen2.5-vl", "qwen2-vl", "qwen3-vl")
ENGINES: tuple[str, ...] = TRAINING_ENGINES
# KL estimators verl 0.9.1's core_algos.kl_penalty computes ("full" is listed there but raises
# NotImplementedError on the first update step, so it is not offered).
KL_TYPES: tuple[str, ...] = ("low_var_kl", "k3", "kl", "k1", "abs", "mse", "k2", "k3+", "low_var_kl+")
LOGGERS: tuple[str, ...] = ("console", "wandb", "mlflow", "tensorboard")
# "iou": the grounding reward; "constant": every rollout scores the same (zero advantages), the
# control run showing that a gain comes from the reward (CPU engine only).
REWARD_FUNCTIONS: tuple[str, ...] = ("iou", "constant")
# Loggers the GPU (VeRL) image can run: verl imports a logger's client only inside fit(), after the
# models are loaded, and training containers get no MLflow access (the platform logs to MLflow).
VERL_LOGGERS: tuple[str, ...] = ("console", "wandb", "tensorboard")
# Side of the square image area that becomes one visual token after patch merging (the resize factor).
_TOKEN_SIDE: dict[str, int] = RESIZE_FACTORS
# Text tokens of the chat template + instruction a prompt needs besides the image.
_PROMPT_TEXT_TOKENS = 64
# Fallback for when the protocol module is not importable (it is in every normal install).
_FALLBACK_PROTOCOLS: tuple[str, ...] = ("qwen2.5-vl", "qwen2-vl", "qwen3-vl", "click-xywh", "normalized-xyxy")


def protocol_names() -> tuple[str, ...]:
    """The answer protocols the reward understands (single source: ``grounding_ops.protocols``)."""
    try:
        from grounding_ops.protocols import PROTOCOL_NAMES
    except ImportError:
        return _FALLBACK_PROTOCOLS
    return tuple(PROTOCOL_NAMES)


KNOB = "knob"  # the dataclass field metadata key of a knob


@dataclass(frozen=True)
class Knob:
    """A spec field people set by hand (the trigger form, ``--set``): its help and its bounds.

    Defined once, on the field (:func:`knob`); the form's Param schemas and the CLI's help are
    generated from it.
    """

    name: str
    title: str
    help: str
    minimum: float
    maximum: float
    kind: str  # "integer" or "number" (JSON Schema)


def knob(default: Any, title: str, help: str, minimum: float, maximum: float) -> Any:
    """A :class:`TrainingSpec` field that is a knob (``name`` and ``kind`` come from the field)."""
    return field(default=default, metadata={KNOB: (title, help, minimum, maximum)})


def knobs() -> dict[str, Knob]:
    """The spec's knobs by field name, in field order."""
    hints = typing.get_type_hints(TrainingSpec)
    found = {}
    for f in dataclasses.fields(TrainingSpec):
        if KNOB not in f.metadata:
            continue
        title, text, minimum, maximum = f.metadata[KNOB]
        kind = "number" if float in typing.get_args(hints[f.name]) or hints[f.name] is float else "integer"
        found[f.name] = Knob(f.name, title, text, minimum, maximum, kind)
    return found


def knobs_help() -> str:
    """The knobs as lines for ``--help``: name, range and what it does."""
    return "\n".join(f"  {k.name} ({k.minimum:g}..{k.maximum:g}): {k.help}" for k in knobs().values())


@dataclass
class TrainingSpec:
    """Everything that defines a training run except the dataset and the output location."""

    model: str  # local HF folder or s3://bucket/prefix of one
    model_family: str = "qwen2.5-vl"
    protocol: str = "qwen2.5-vl"
    engine: str = "verl"  # default engine of the preset; `--engine` on the command line wins
    # GRPO
    rollout_n: int = knob(
        5, "Rollouts per prompt", "GRPO group size n (>= 2; advantages are relative to the group).", 2, 64
    )
    learning_rate: float = knob(
        1e-6, "Learning rate", "Actor learning rate (typical 1e-6 for 3B-7B models).", 1e-9, 1e-2
    )
    kl_coef: float = knob(  # 0 disables the KL loss (and the reference model)
        0.01, "KL coefficient", "Weight of the KL loss to the reference model (0 disables it).", 0, 10
    )
    kl_type: str = "low_var_kl"
    entropy_coef: float = 0.0
    temperature: float = 1.0
    # batches (in prompts; VeRL multiplies by rollout_n internally)
    train_batch_size: int = 128
    ppo_mini_batch_size: int = 32
    micro_batch_size_per_gpu: int = 4
    max_prompt_length: int = 2048
    max_response_length: int = 256
    # schedule
    total_epochs: int = knob(1, "Epochs", "Passes over the training split.", 1, 1000)
    total_steps: int | None = knob(  # caps the run; None = total_epochs over the dataset
        None, "Total steps", "Cap on training steps (otherwise the epochs decide).", 1, 1_000_000
    )
    # steps between checkpoints; -1 = only at the end (VeRL gets a frequency past the last step,
    # because verl saves only when save_freq > 0, and always at its last step then)
    save_freq: int = 20
    test_freq: int = 10  # steps between validations; -1 = never
    max_checkpoints_to_keep: int = 2  # local checkpoints the engine keeps (older ones are uploaded first)
    val_max_samples: int = 512  # validation rows VeRL reads (validation runs every test_freq steps)
    # hardware
    gpus_per_node: int = knob(8, "GPUs per node", "GPUs used on each node (gpu engine).", 1, 16)
    nnodes: int = knob(1, "Nodes", "Number of nodes (more than 1 is submitted to the Ray cluster).", 1, 128)
    # A folder mounted at the same path on every node (NFS, Lustre, ...): required when nnodes > 1,
    # because each node writes its FSDP shards to its own disk and the merge needs all of them.
    shared_dir: str = ""
    tensor_parallel_size: int = 1  # vLLM rollout tensor parallelism
    gpu_memory_utilization: float = 0.6  # fraction of GPU memory vLLM may take
    param_offload: bool = False
    optimizer_offload: bool = False
    gradient_checkpointing: bool = True
    # LoRA (0 = full fine-tuning). With LoRA only the language model is adapted; full fine-tuning
    # trains every weight, the vision tower included (verl 0.9.1 reads actor.freeze_vision_tower nowhere).
    lora_rank: int = knob(0, "LoRA rank", "0 = full fine-tuning; e.g. 64 for LoRA.", 0, 1024)
    lora_alpha: int = 16
    # image processor
    min_pixels: int = 3136
    max_pixels: int = 1003520
    # tracking
    logger: list[str] = field(default_factory=lambda: ["console"])
    project_name: str = "grounding-ops"
    experiment_name: str = "grpo-grounding"
    # CPU engine only: supervised warm-up steps before GRPO (a random tiny model earns no reward)
    sft_warmup_steps: int = 0
    # CPU engine only: the GRPO reward; "constant" is the control run of benchmarks/grpo_gain.py
    reward_function: str = "iou"
    seed: int = 0

    # ------------------------------------------------------------------ derived values
    @property
    def n_gpus(self) -> int:
        return self.gpus_per_node * self.nnodes

    @property
    def use_lora(self) -> bool:
        return self.lora_rank > 0

    @property
    def use_kl_loss(self) -> bool:
        return self.kl_coef > 0

    @property
    def trains_vision_tower(self) -> bool:
        """What really happens on VeRL: full fine-tuning updates the vision tower too."""
        return not self.use_lora

    @property
    def resize_factor(self) -> int:
        """Image sides are rounded to multiples of this (patch size x spatial merge) for the family."""
        return _TOKEN_SIDE.get(self.model_family, 28)

    # ------------------------------------------------------------------ validation
    def validate(self, engine: str | None = None) -> "TrainingSpec":
        """Raise ValueError listing every problem (with the fix) or return self.

        ``engine`` defaults to ``self.engine``; the GPU-layout checks apply to the VeRL engine only.
        """
        engine = engine or self.engine
        problems: list[str] = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        need(bool(self.model and self.model.strip()), "model is empty: set model=<local HF folder or s3:// URI>")
        need(engine in ENGINES, f"engine {engine!r} is unknown: use one of {', '.join(ENGINES)}")
        need(
            self.model_family in MODEL_FAMILIES,
            f"model_family {self.model_family!r} is unknown: use one of {', '.join(MODEL_FAMILIES)}",
        )
        protocols = protocol_names()
        need(self.protocol in protocols, f"protocol {self.protocol!r} is unknown: use one of {', '.join(protocols)}")
        need(self.kl_type in KL_TYPES, f"kl_type {self.kl_type!r} is unknown: use one of {', '.join(KL_TYPES)}")
        bad_loggers = [name for name in self.logger if name not in LOGGERS]
        need(not bad_loggers, f"logger {bad_loggers} not supported: use any of {', '.join(LOGGERS)}")
        need(bool(self.logger), "logger is empty: use at least logger=console")
        need(len(set(self.logger)) == len(self.logger), f"logger {self.logger} lists a logger twice")

        for name in (
            "train_batch_size",
            "ppo_mini_batch_size",
            "micro_batch_size_per_gpu",
            "max_prompt_length",
            "max_response_length",
            "total_epochs",
            "gpus_per_node",
            "nnodes",
            "tensor_parallel_size",
            "min_pixels",
            "max_pixels",
            "max_checkpoints_to_keep",
            "val_max_samples",
        ):
            value = getattr(self, name)
            need(value > 0, f"{name} must be a positive integer, got {value}")
        need(
            self.rollout_n >= 2,
            f"rollout_n must be >= 2 for GRPO (advantages are relative to the group), got {self.rollout_n}",
        )
        need(
            self.total_steps is None or self.total_steps > 0,
            f"total_steps must be a positive integer or none, got {self.total_steps}",
        )
        for name in ("save_freq", "test_freq"):
            value = getattr(self, name)
            need(value == -1 or value > 0, f"{name} must be a positive number of steps or -1 (disabled), got {value}")
        need(0 < self.learning_rate < 1, f"learning_rate must be in (0, 1), got {self.learning_rate} (typical: 1e-6)")
        need(self.kl_coef >= 0, f"kl_coef must be >= 0 (0 disables the KL loss), got {self.kl_coef}")
        need(self.entropy_coef >= 0, f"entropy_coef must be >= 0, got {self.entropy_coef}")
        need(
            self.temperature > 0,
            f"temperature must be > 0 (GRPO needs sampled, diverse rollouts), got {self.temperature}",
        )
        need(
            0 < self.gpu_memory_utilization <= 1,
            f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization} (typical: 0.4-0.7)",
        )
        need(self.sft_warmup_steps >= 0, f"sft_warmup_steps must be >= 0, got {self.sft_warmup_steps}")
        need(
            self.reward_function in REWARD_FUNCTIONS,
            f"reward_function {self.reward_function!r} is unknown: use one of {', '.join(REWARD_FUNCTIONS)}",
        )
        need(
            engine != "verl" or self.reward_function == "iou",
            f"reward_function={self.reward_function} is the CPU engine's control run: use reward_function=iou with VeRL",
        )
        need(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        for name in ("project_name", "experiment_name"):
            value = getattr(self, name)
            need(
                bool(value) and all(c.isalnum() or c in "-_." for c in value),
                f"{name} {value!r} must be non-empty and use only letters, digits, '-', '_' and '.'",
            )

        # LoRA
        need(self.lora_rank >= 0, f"lora_rank must be >= 0 (0 = full fine-tuning), got {self.lora_rank}")
        if self.lora_rank > 0:
            need(
                self.lora_rank <= 512, f"lora_rank {self.lora_rank} is above vLLM's largest LoRA rank (512): use 8-256"
            )
            need(self.lora_alpha > 0, f"lora_alpha must be > 0 when lora_rank > 0, got {self.lora_alpha}")
            if self.lora_alpha > 0:
                ratio = self.lora_alpha / self.lora_rank
                need(
                    1 / 16 <= ratio <= 16,
                    f"lora_alpha/lora_rank = {self.lora_alpha}/{self.lora_rank} scales the adapter by {ratio:g}: "
                    "keep the ratio between 1/16 and 16 (typical: alpha = rank or 2*rank)",
                )

        # Images and prompt length
        if self.min_pixels > 0 and self.max_pixels > 0:
            need(
                self.min_pixels <= self.max_pixels,
                f"min_pixels ({self.min_pixels}) must be <= max_pixels ({self.max_pixels})",
            )
            side = _TOKEN_SIDE.get(self.model_family, 28)
            need(
                self.min_pixels >= side * side,
                f"min_pixels ({self.min_pixels}) must be at least {side * side} ({side}x{side}, one visual token)",
            )
            image_tokens = self.max_pixels // (side * side)
            need(
                self.max_prompt_length >= image_tokens + _PROMPT_TEXT_TOKENS,
                f"max_prompt_length ({self.max_prompt_length}) cannot hold an image of max_pixels "
                f"({self.max_pixels} = {image_tokens} visual tokens) plus the instruction; every such prompt "
                f"would be filtered as overlong: raise max_prompt_length to >= {image_tokens + _PROMPT_TEXT_TOKENS} "
                "or lower max_pixels",
            )

        # Batch layout (what VeRL checks after starting Ray)
        positive = all(
            getattr(self, n) > 0
            for n in ("train_batch_size", "ppo_mini_batch_size", "micro_batch_size_per_gpu", "rollout_n")
        )
        if positive:
            need(
                self.ppo_mini_batch_size <= self.train_batch_size,
                f"ppo_mini_batch_size ({self.ppo_mini_batch_size}) must be <= train_batch_size ({self.train_batch_size})",
            )
            need(
                self.train_batch_size % self.ppo_mini_batch_size == 0,
                f"train_batch_size ({self.train_batch_size}) must be a multiple of ppo_mini_batch_size "
                f"({self.ppo_mini_batch_size}) so every update step sees a full mini-batch",
            )
        if engine == "verl" and positive and self.gpus_per_node > 0 and self.nnodes > 0:
            world = self.n_gpus
            real_batch = self.train_batch_size * self.rollout_n
            need(
                real_batch % world == 0,
                f"train_batch_size*rollout_n = {self.train_batch_size}*{self.rollout_n} = {real_batch} must be "
                f"divisible by the number of GPUs ({self.gpus_per_node}x{self.nnodes} = {world})",
            )
            mini = self.ppo_mini_batch_size * self.rollout_n
            if mini % world != 0:
                problems.append(
                    f"ppo_mini_batch_size*rollout_n = {self.ppo_mini_batch_size}*{self.rollout_n} = {mini} must be "
                    f"divisible by the number of GPUs ({world})"
                )
            else:
                per_gpu = mini // world
                need(
                    per_gpu % self.micro_batch_size_per_gpu == 0,
                    f"the per-GPU mini-batch (ppo_mini_batch_size*rollout_n/GPUs = {mini}/{world} = {per_gpu}) must "
                    f"be a multiple of micro_batch_size_per_gpu ({self.micro_batch_size_per_gpu})",
                )
            if self.tensor_parallel_size > 0:
                need(
                    self.gpus_per_node % self.tensor_parallel_size == 0,
                    f"tensor_parallel_size ({self.tensor_parallel_size}) must divide gpus_per_node "
                    f"({self.gpus_per_node}); use 1, 2, 4 or 8 as the node allows",
                )
        if engine == "verl":
            self._verl_only_checks(need)
        if engine == "cpu" and positive:
            per_step = self.ppo_mini_batch_size * self.rollout_n
            need(
                per_step % self.micro_batch_size_per_gpu == 0,
                f"ppo_mini_batch_size*rollout_n ({per_step}) must be a multiple of micro_batch_size_per_gpu "
                f"({self.micro_batch_size_per_gpu})",
            )

        if problems:
            raise ValueError("invalid training spec:\n  - " + "\n  - ".join(problems))
        return self

    def _verl_only_checks(self, need: Any) -> None:
        no_mlflow = [name for name in self.logger if name in LOGGERS and name not in VERL_LOGGERS]
        need(
            not no_mlflow,
            f"logger {no_mlflow} is not available on the VeRL engine: the GPU image has no mlflow and verl "
            f"would fail after loading the models; use {', '.join(VERL_LOGGERS)} (the pipeline logs every "
            "evaluation to MLflow anyway)",
        )
        if self.nnodes > 1:
            need(
                self.shared_dir.startswith("/"),
                f"nnodes={self.nnodes} needs shared_dir=<absolute folder mounted on every node at the same path>: "
                "each node writes its FSDP shards to its own disk and the final model needs all of them in one "
                f"folder (got shared_dir={self.shared_dir!r})",
            )
        pretrained = not self.model.startswith("tiny:")  # a tiny random model has no native frame
        frame_problem = family_protocol_problem(self.model_family, self.protocol) if pretrained else None
        need(frame_problem is None, f"{frame_problem}, and export the dataset with it")

    # ------------------------------------------------------------------ overrides and serialisation
    def with_overrides(self, assignments: Iterable[str]) -> "TrainingSpec":
        """Return a copy with ``key=value`` assignments applied (typed; errors name the fix)."""
        hints = _field_types()
        changes: dict[str, Any] = {}
        for item in assignments:
            key, sep, raw = item.partition("=")
            key = key.strip()
            if not sep or not key:
                raise ValueError(f"override {item!r} must look like key=value (e.g. rollout_n=8)")
            if key not in hints:
                raise ValueError(f"unknown spec key {key!r}; valid keys: {', '.join(sorted(hints))}")
            changes[key] = _parse_value(key, raw.strip(), hints[key])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainingSpec":
        """Build a spec from a mapping (e.g. ``run.json``'s ``spec``); unknown keys are refused."""
        hints = _field_types()
        unknown = sorted(set(data) - set(hints))
        if unknown:
            raise ValueError(f"unknown spec keys {unknown}; valid keys: {', '.join(sorted(hints))}")
        if "model" not in data:
            raise ValueError("spec has no 'model': set it to a local HF folder or an s3:// URI")
        values = {key: _coerce(key, value, hints[key]) for key, value in data.items()}
        return cls(**values)


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainingSpec)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainingSpec)}


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_NONE = {"none", "null", ""}


def _type_name(tp: Any) -> str:
    if tp is bool:
        return "a boolean (true/false)"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if typing.get_origin(tp) is list:
        return "a comma-separated list"
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) == 1:
        return _type_name(args[0]) + " or none"
    return str(tp)


def _parse_value(key: str, raw: str, tp: Any) -> Any:
    """Parse a command-line string into the field's type."""
    args = typing.get_args(tp)
    if type(None) in args:
        if raw.lower() in _NONE:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        try:
            return _parse_value(key, raw, inner)
        except ValueError:
            raise ValueError(f"{key}={raw!r}: {key} must be {_type_name(tp)}") from None
    try:
        if tp is bool:
            low = raw.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(raw)
        if tp is int:
            return int(raw)
        if tp is float:
            return float(raw)
        if tp is str:
            return raw
        if typing.get_origin(tp) is list:
            text = raw.strip()
            if text.startswith("[") and text.endswith("]"):
                text = text[1:-1]
            return [part.strip().strip("'\"") for part in text.split(",") if part.strip()]
    except ValueError:
        pass
    raise ValueError(f"{key}={raw!r}: {key} must be {_type_name(tp)}")


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check/convert a JSON value (from_dict) to the field's type."""
    args = typing.get_args(tp)
    if type(None) in args:
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(key, value, inner)
    if isinstance(value, str) and tp is not str:
        return _parse_value(key, value, tp)
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, str):
        return value
    if typing.get_origin(tp) is list and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError(f"spec key {key!r} must be {_type_name(tp)}, got {value!r}")
