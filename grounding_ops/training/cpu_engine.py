"""The CPU training engine: a supervised warm-up, then GRPO with TRL, on a small model.

It is the CPU twin of the VeRL engine behind the same container contract, meant for tiny
models on laptops and in CI. The runner starts it as a subprocess::

    python -m grounding_ops.training.cpu_engine --config engine.json

``engine.json`` (see :class:`EngineConfig`) names the spec, the local model folder, the
exported train parquet files (VeRL rows of the data contract) and the checkpoint folder.

What it does:

1. reads the rows and turns each into a TRL vision example: the conversational prompt from
   :func:`grounding_ops.protocols.build_prompt` (the row's ``prompt``) with its ``<image>``
   placeholder removed, the decoded image in an ``images`` column (TRL puts the image block
   where the placeholder was: before the instruction), and the ground truth;
2. a partial supervised warm-up (``spec.sft_warmup_steps`` steps of a plain torch loop) on the
   perfect answers of the protocol, so that a random model starts earning non-zero IoU and
   GRPO gets a signal; the warmed-up model is saved to ``<checkpoints>/warmup`` and is GRPO's
   starting point and KL reference. Warm-up and GRPO train the language model only: the vision
   tower stays as it is (see :func:`freeze_vision_tower`);
3. GRPO with TRL's ``GRPOTrainer`` and our reward (:func:`grounding_ops.reward.score_response`;
   ``spec.reward_function=constant`` swaps in the control, see :func:`make_reward_function`)
   for ``spec.total_steps`` steps, one readable line per step, checkpoints every
   ``spec.save_freq`` steps (and at the end) to ``<checkpoints>/global_step_N`` (model,
   processor and trainer state; the folder loads with ``from_pretrained``), followed by the
   tracker file ``latest_checkpointed_iteration.txt`` (VeRL's convention, so the runner
   treats both engines alike).

Resume: when ``<checkpoints>`` already holds a ``global_step_N`` (with its trainer state), the
run continues from step N. The warm-up is deterministic (seeded), so a resume recomputes it
when its folder is gone, which gives the same KL reference.

One CPU-engine step is one train batch (``train_batch_size`` prompts x ``rollout_n``
completions), as in VeRL; with ``ppo_mini_batch_size < train_batch_size`` a step makes
``train_batch_size / ppo_mini_batch_size`` optimizer updates on the same rollouts.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from grounding_ops.records import Record
from grounding_ops.training.checkpoints import latest_local_checkpoint

IMAGE_PLACEHOLDER = "<image>"
WARMUP_DIR = "warmup"
WARMUP_LEARNING_RATE = 2e-3
WARMUP_BATCH_SIZE = 16
# Intra-op threads of torch. Tiny models gain nothing from more, and on a busy machine
# OpenMP threads waiting for each other made steps 10-15x slower (measured: 0.5 s vs 4.5-8.6 s).
THREADS_ENV = "GROUNDING_OPS_CPU_THREADS"
DEFAULT_THREADS = 1


class EngineError(RuntimeError):
    """A problem with the inputs of the engine; the message says what to fix."""


@dataclass
class EngineConfig:
    spec: dict[str, Any]
    model_dir: str
    train_files: list[str]
    checkpoint_dir: str
    total_steps: int
    result_path: str | None = None
    val_files: list[str] = field(default_factory=list)
    # Recompute the (deterministic) warm-up on resume too, so the runner can publish the base
    # model when the run that first made it died before doing so.
    need_warmup_model: bool = False

    @classmethod
    def load(cls, path: str | Path) -> "EngineConfig":
        return cls(**json.loads(Path(path).read_text()))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2, sort_keys=True))


# --------------------------------------------------------------------------- dataset rows
@dataclass
class Example:
    """One training example, decoded from a VeRL parquet row."""

    messages: list[dict[str, Any]]  # prompt with the <image> placeholders removed
    images: list[Any]  # PIL images
    boxes: list[list[float]]
    protocol: str
    image_size: list[int]
    resized_size: list[int] | None
    phrase: str


def _strip_image_placeholders(messages: Sequence[dict[str, Any]], n_images: int, where: str) -> list[dict[str, Any]]:
    """TRL's vision prompt: string contents, the images given separately and placed first.

    The data contract puts one ``<image>`` per image at the start of the user turn (that is
    what ``build_prompt`` writes), which is exactly where TRL inserts the image blocks.
    """
    out: list[dict[str, Any]] = []
    found = 0
    for message in messages:
        content = message.get("content")
        if not isinstance(content, str):
            raise EngineError(f"{where}: prompt content must be a string with {IMAGE_PLACEHOLDER} placeholders")
        count = content.count(IMAGE_PLACEHOLDER)
        if count:
            if message.get("role") != "user" or not content.startswith(IMAGE_PLACEHOLDER * count):
                raise EngineError(
                    f"{where}: {IMAGE_PLACEHOLDER} must open the user turn (as build_prompt writes it); "
                    "re-export the dataset with grounding-ops prepare"
                )
            content = content[len(IMAGE_PLACEHOLDER) * count :]
            found += count
        out.append({"role": message["role"], "content": content})
    if found != n_images:
        raise EngineError(f"{where}: the prompt has {found} {IMAGE_PLACEHOLDER} placeholders for {n_images} images")
    return out


def load_examples(paths: Sequence[str | Path]) -> list[Example]:
    """Decode the VeRL rows of ``paths`` (parquet) into examples."""
    import pyarrow.parquet as pq
    from PIL import Image

    examples: list[Example] = []
    for path in paths:
        for index, row in enumerate(pq.read_table(path).to_pylist()):
            where = f"{Path(path).name} row {index}"
            try:
                truth = row["reward_model"]["ground_truth"]
                if isinstance(truth, str):
                    truth = json.loads(truth)
                images = [Image.open(io.BytesIO(item["bytes"])).convert("RGB") for item in row["images"]]
                extra = row.get("extra_info") or {}
                examples.append(
                    Example(
                        messages=_strip_image_placeholders(row["prompt"], len(images), where),
                        images=images,
                        boxes=[list(map(float, b)) for b in truth["boxes"]],
                        protocol=str(truth["protocol"]),
                        image_size=list(truth["image_size"]),
                        resized_size=list(truth["resized_size"]) if truth.get("resized_size") else None,
                        phrase=str(extra.get("phrase") or ""),
                    )
                )
            except (KeyError, TypeError, ValueError, OSError) as exc:
                if isinstance(exc, EngineError):
                    raise
                raise EngineError(f"{where} does not follow the dataset contract ({exc!r}); re-export it") from exc
    if not examples:
        raise EngineError(f"no training rows in {', '.join(map(str, paths))}")
    return examples


def check_resized_sizes(examples: Sequence[Example], processor: Any) -> None:
    """The reward reads resized-frame answers with the exported ``resized_size``: it must be the
    size this processor feeds the model, or training targets the wrong coordinates."""
    from grounding_ops.protocols import get_protocol
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    ip = processor.image_processor
    factor = ip.patch_size * ip.merge_size
    min_pixels, max_pixels = ip.size["shortest_edge"], ip.size["longest_edge"]
    for ex in examples[:50]:
        if get_protocol(ex.protocol).frame != "resized" or ex.resized_size is None:
            continue
        w, h = ex.image_size
        rh, rw = smart_resize(h, w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
        if [rw, rh] != list(ex.resized_size):
            raise EngineError(
                f"the dataset says a {w}x{h} image is resized to {ex.resized_size[0]}x{ex.resized_size[1]}, "
                f"but the model's processor (min_pixels={min_pixels}, max_pixels={max_pixels}) makes it {rw}x{rh}: "
                "export the dataset with the spec's min_pixels/max_pixels, or set them to the export's values"
            )


# --------------------------------------------------------------------------- model pieces
def load_processor(model_dir: str | Path, spec: Any) -> Any:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir)
    ip = processor.image_processor
    ip.size = {"shortest_edge": int(spec.min_pixels), "longest_edge": int(spec.max_pixels)}
    for name, value in (("min_pixels", spec.min_pixels), ("max_pixels", spec.max_pixels)):
        if hasattr(ip, name):
            setattr(ip, name, int(value))
    processor.tokenizer.padding_side = "left"
    return processor


def perfect_answer(ex: Example) -> str:
    from grounding_ops.protocols import get_protocol

    return get_protocol(ex.protocol).format_answer(ex.boxes, ex.image_size, ex.resized_size)


def freeze_vision_tower(model: Any) -> int:
    """Train the language model only: the vision tower (patch embedding, blocks, merger) stays fixed.

    Trained together from random weights, the tiny models' language model learns the answers'
    prior long before it reads the image, and the vision tower drifts meanwhile: on the earlier
    (clipped-ramp) shapes it pulled every image token towards one constant vector (their spread fell
    from 35% to 0.2% of their norm in 300 warm-up steps), and on the current ones swapping the
    images of held-out prompts still moved the answer probabilities by < 0.001 after 1000 steps.
    With the tower fixed (a fixed random projection of the pixels that keeps image tokens apart)
    the same swap moved them by 0.04 and greedy IoU rose from 0.12 to 0.27. Returns the number of
    frozen parameters.
    """
    frozen = 0
    for name, parameter in model.named_parameters():
        if ".visual." in f".{name}":
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    return frozen


def _encode_sft(processor: Any, ex: Example) -> dict[str, Any]:
    """Tokens of prompt + perfect answer, labels only on the answer (and its end token)."""
    from trl.data_utils import prepare_multimodal_messages

    prompt = prepare_multimodal_messages(ex.messages, images=ex.images)
    prompt_text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full_text = prompt_text + perfect_answer(ex) + "<|im_end|>"
    prompt_ids = processor(text=[prompt_text], images=ex.images, return_tensors="pt")["input_ids"][0]
    full = processor(text=[full_text], images=ex.images, return_tensors="pt")
    labels = full["input_ids"][0].clone()
    labels[: len(prompt_ids)] = -100
    item = {key: value[0] for key, value in full.items() if key in ("input_ids", "attention_mask", "mm_token_type_ids")}
    item["labels"] = labels
    item["pixel_values"] = full["pixel_values"]
    item["image_grid_thw"] = full["image_grid_thw"]
    return item


def _collate(items: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    import torch

    length = max(len(item["input_ids"]) for item in items)

    def pad(key: str, value: int) -> Any:
        rows = []
        for item in items:
            seq = item[key]
            rows.append(torch.cat([seq, torch.full((length - len(seq),), value, dtype=seq.dtype)]))
        return torch.stack(rows)

    batch = {
        "input_ids": pad("input_ids", pad_id),
        "attention_mask": pad("attention_mask", 0),
        "labels": pad("labels", -100),
    }
    if "mm_token_type_ids" in items[0]:
        batch["mm_token_type_ids"] = pad("mm_token_type_ids", 0)
    batch["pixel_values"] = torch.cat([item["pixel_values"] for item in items])
    batch["image_grid_thw"] = torch.cat([item["image_grid_thw"] for item in items])
    return batch


def sft_warmup(
    model_dir: str | Path, processor: Any, examples: Sequence[Example], steps: int, seed: int, out_dir: Path
) -> Path:
    """Supervised warm-up on perfect answers; writes an HF folder (model + processor) to ``out_dir``."""
    import torch
    from transformers import AutoModelForImageTextToText, set_seed

    set_seed(seed)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    if steps > 0:
        freeze_vision_tower(model)
        model.train()
        encoded = [_encode_sft(processor, ex) for ex in examples]
        pad_id = processor.tokenizer.pad_token_id
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=WARMUP_LEARNING_RATE, weight_decay=0.0)
        generator = torch.Generator().manual_seed(seed)
        batch_size = min(WARMUP_BATCH_SIZE, len(encoded))
        started = time.perf_counter()
        order: list[int] = []
        loss_value = float("nan")
        for step in range(1, steps + 1):
            if len(order) < batch_size:
                order += torch.randperm(len(encoded), generator=generator).tolist()
            picked, order = order[:batch_size], order[batch_size:]
            loss = model(**_collate([encoded[i] for i in picked], pad_id)).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            loss_value = float(loss.detach())
            if step == 1 or step % 10 == 0 or step == steps:
                print(f"warm-up step {step}/{steps} loss={loss_value:.3f}", flush=True)
        print(
            f"warm-up done: {steps} supervised steps in {time.perf_counter() - started:.1f}s, final loss {loss_value:.3f}",
            flush=True,
        )
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


# --------------------------------------------------------------------------- reward
CONSTANT_REWARD = 1.0
# Share of the reward paid for an answer exactly in the protocol that then ends (the model's end
# token within max_response_length). Without it nothing asks a rollout to end after its answer,
# and the tiny model drifted into running on to the length limit (answer, then digits and
# brackets) within 100-300 GRPO steps; masking cut-off rollouts out of the loss instead made that
# state absorbing (no gradient left). Paying the share for a parseable answer alone was not enough:
# the parser reads the answer before the run-on text, so a run-on rollout earned it too, and from
# step ~140 every rollout ran to the limit (and trained on its run-on tokens).
FORMAT_WEIGHT = 0.1


def make_reward_function(kind: str = "iou", end_token_ids: Sequence[int] = ()) -> Any:
    """Our IoU reward as a TRL reward function (completions + dataset columns in, floats out):
    ``(1 - FORMAT_WEIGHT) * match + FORMAT_WEIGHT * [answer exactly in the protocol and ended]``.

    ``end_token_ids``: the tokens that end a completion (TRL cuts each completion after the first
    one); a completion whose last token is none of them ran to the length limit and earns no format
    share. Empty: every completion counts as ended (when TRL passes no token ids).

    ``kind="constant"`` is the control: every rollout gets :data:`CONSTANT_REWARD` (so every
    GRPO advantage is zero), while the IoU it would have earned is still logged.
    """
    from grounding_ops.reward import score_response

    if kind not in ("iou", "constant"):
        raise EngineError(f"reward_function {kind!r} is unknown: use iou or constant")
    ends = frozenset(int(t) for t in end_token_ids)

    def grounding_iou(
        completions: list[Any],
        ground_truth: list[str],
        log_metric: Any = None,
        completion_ids: list[list[int]] | None = None,
        **_: Any,
    ) -> list[float]:
        scores: list[float] = []
        ious: list[float] = []
        accs: list[float] = []
        formats: list[float] = []
        ended: list[float] = []
        for index, (completion, truth_json) in enumerate(zip(completions, ground_truth, strict=True)):
            text = completion[-1]["content"] if isinstance(completion, list) else str(completion)
            if isinstance(text, list):  # structured content blocks
                text = "".join(part.get("text") or "" for part in text)
            truth = json.loads(truth_json)
            ids = completion_ids[index] if completion_ids is not None and ends else None
            did_end = ids is None or (bool(ids) and int(ids[-1]) in ends)
            result = score_response(
                text,
                truth["boxes"],
                image_size=truth["image_size"],
                protocol=truth["protocol"],
                resized_size=truth.get("resized_size"),
                format_weight=FORMAT_WEIGHT,
                ended=did_end,
            )
            scores.append(float(result["score"]))
            ious.append(float(result["iou"]))
            accs.append(float(result["acc"]))
            formats.append(1.0 if result["format_ok"] else 0.0)
            ended.append(1.0 if did_end else 0.0)
        if log_metric is not None and scores:
            log_metric("iou", sum(ious) / len(ious))
            log_metric("acc", sum(accs) / len(accs))
            log_metric("format_ok", sum(formats) / len(formats))
            log_metric("ended", sum(ended) / len(ended))
        return [CONSTANT_REWARD] * len(scores) if kind == "constant" else scores

    return grounding_iou


# --------------------------------------------------------------------------- training
def _resumable_grpo_trainer(base: type) -> type:
    """GRPOTrainer whose resume really loads the checkpoint's weights.

    transformers 5.9's ``Trainer._load_from_checkpoint`` reads ``model.safetensors`` with a
    non-strict ``load_state_dict``, but ``save_pretrained`` writes Qwen2-VL weights under their
    original (hub) names (``model.layers.*``, ``visual.*``), not the module names of the v5
    classes (``model.language_model.layers.*``, ``model.visual.*``): nothing matches, nothing
    is loaded, and a resume would silently restart from the initial weights. ``from_pretrained``
    applies the name conversion, so load through it and copy the weights strictly.
    """

    class ResumableGRPOTrainer(base):  # type: ignore[misc, valid-type]
        def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
            import torch
            from transformers import AutoModelForImageTextToText

            target = model if model is not None else self.model
            loaded = AutoModelForImageTextToText.from_pretrained(resume_from_checkpoint, dtype=torch.float32)
            target.load_state_dict(loaded.state_dict(), strict=True)
            del loaded

    return ResumableGRPOTrainer


def end_token_ids(model: Any, processor: Any) -> list[int]:
    """The tokens that end a completion, as TRL's GRPO trainer reads them (the tokenizer's end
    token and the model's generation ``eos_token_id``s)."""
    configured = model.generation_config.eos_token_id
    configured = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    return sorted({int(processor.tokenizer.eos_token_id), *(int(t) for t in configured)})


def cpu_threads() -> int:
    raw = os.environ.get(THREADS_ENV, "").strip()
    try:
        return max(1, int(raw)) if raw else DEFAULT_THREADS
    except ValueError:
        raise EngineError(f"{THREADS_ENV}={raw!r} must be a whole number of threads, e.g. 1") from None


@dataclass(frozen=True)
class EngineResult(Record):
    """What one CPU-engine run did (``config.result_path``; the runner's :class:`CpuEngine` reads it).

    :param start_step: the checkpoint step it started from (0: from the start).
    :param end_step: the last checkpoint step it saved.
    :param history: one entry per GRPO step (reward, IoU, KL, ..., timestamp).
    :param warmup_steps: supervised warm-up steps it ran (0 on a resume that needed none).
    """

    LEGACY_SCHEMA = 1
    start_step: int
    end_step: int
    steps_done: int
    final_metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds_per_step: float | None = None
    train_seconds: float = 0.0
    wandb_url: str | None = None
    warmup_steps: int = 0


@dataclass(frozen=True)
class Schedule:
    """How the spec's steps map onto TRL's optimizer updates."""

    total_steps: int
    updates_per_step: int  # one GRPO step = one train batch; mini-batches make the updates
    grad_accum: int

    @classmethod
    def of(cls, spec: Any, total_steps: int) -> "Schedule":
        completions_per_update = spec.ppo_mini_batch_size * spec.rollout_n
        return cls(
            total_steps=int(total_steps),
            updates_per_step=spec.train_batch_size // spec.ppo_mini_batch_size,
            grad_accum=completions_per_update // spec.micro_batch_size_per_gpu,
        )


def warm_start(
    config: EngineConfig, spec: Any, processor: Any, examples: Sequence[Example], resuming: bool, warmup_dir: Path
) -> str:
    """GRPO's starting model: the warm-up's (made now unless saved), or the model itself on a resume
    that needs no KL reference and no published base model."""
    if resuming and not spec.use_kl_loss and not config.need_warmup_model:
        return str(config.model_dir)
    if (warmup_dir / "config.json").is_file():
        return str(warmup_dir)
    return str(sft_warmup(config.model_dir, processor, examples, spec.sft_warmup_steps, spec.seed, warmup_dir))


def grpo_rows(examples: Sequence[Example]) -> list[dict[str, Any]]:
    """The rows TRL's GRPO trainer reads: prompt, images, and the reward's ground truth."""
    return [
        {
            "prompt": ex.messages,
            "images": ex.images,
            "ground_truth": json.dumps(
                {
                    "boxes": ex.boxes,
                    "protocol": ex.protocol,
                    "image_size": ex.image_size,
                    "resized_size": ex.resized_size,
                }
            ),
        }
        for ex in examples
    ]


def grpo_config(spec: Any, schedule: Schedule, checkpoint_dir: Path) -> Any:
    """TRL's ``GRPOConfig`` for the spec (CPU, float32, one save per ``save_freq`` steps)."""
    from trl import GRPOConfig

    updates = schedule.updates_per_step
    if "wandb" in spec.logger:
        os.environ.setdefault("WANDB_PROJECT", spec.project_name)
    return GRPOConfig(
        output_dir=str(checkpoint_dir / "trainer"),
        run_name=spec.experiment_name,
        max_steps=schedule.total_steps * updates,
        per_device_train_batch_size=spec.micro_batch_size_per_gpu,
        gradient_accumulation_steps=schedule.grad_accum,
        steps_per_generation=schedule.grad_accum * updates,
        num_generations=spec.rollout_n,
        max_completion_length=spec.max_response_length,
        temperature=spec.temperature,
        learning_rate=spec.learning_rate,
        lr_scheduler_type="constant",  # a resume with a higher total_steps continues the same schedule
        beta=spec.kl_coef,
        logging_steps=1,
        save_strategy="steps",
        save_steps=(spec.save_freq if spec.save_freq > 0 else schedule.total_steps) * updates,
        report_to=["wandb"] if "wandb" in spec.logger else [],
        seed=spec.seed,
        data_seed=spec.seed,
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=spec.gradient_checkpointing,
        dataloader_num_workers=0,
        disable_tqdm=True,
        log_completions=False,
    )


def _wandb_url(finish: bool = False) -> str | None:
    try:
        import wandb
    except ImportError:
        return None
    url = wandb.run.url if wandb.run is not None else None
    if finish and wandb.run is not None:
        wandb.finish()
    return url


def run(config: EngineConfig) -> EngineResult:
    """Resume point -> inputs -> warm start -> GRPO -> result (also written to ``config.result_path``)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, PrinterCallback, set_seed
    from trl import GRPOTrainer

    from grounding_ops.training.cpu_callbacks import CheckpointNamer, StepPrinter
    from grounding_ops.training.spec import TrainingSpec

    spec = TrainingSpec.from_dict(config.spec)
    spec.validate(engine="cpu")
    checkpoint_dir = Path(config.checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    schedule = Schedule.of(spec, config.total_steps)

    # resume point
    latest = latest_local_checkpoint(checkpoint_dir)
    start_step = latest[0] if latest else 0
    if start_step >= schedule.total_steps:
        raise EngineError(
            f"nothing to train: already at step {start_step} of {schedule.total_steps}; raise total_steps"
        )

    # inputs
    torch.set_num_threads(cpu_threads())
    set_seed(spec.seed)
    processor = load_processor(config.model_dir, spec)
    examples = load_examples(config.train_files)
    check_resized_sizes(examples, processor)
    print(
        f"cpu engine: {len(examples)} training rows, steps {start_step + 1}..{schedule.total_steps}, "
        f"{spec.train_batch_size} prompts x {spec.rollout_n} rollouts per step, protocol {spec.protocol}",
        flush=True,
    )

    # warm start (skipped on resume unless the KL reference or the base model needs it)
    start_model = warm_start(config, spec, processor, examples, latest is not None, checkpoint_dir / WARMUP_DIR)

    # GRPO
    printer = StepPrinter(schedule.total_steps, schedule.updates_per_step, spec.train_batch_size * spec.rollout_n)
    policy = AutoModelForImageTextToText.from_pretrained(start_model, dtype=torch.float32)
    freeze_vision_tower(policy)  # as in the warm-up: GRPO trains the language model
    trainer = _resumable_grpo_trainer(GRPOTrainer)(
        model=policy,
        reward_funcs=[make_reward_function(spec.reward_function, end_token_ids=end_token_ids(policy, processor))],
        args=grpo_config(spec, schedule, checkpoint_dir),
        train_dataset=Dataset.from_list(grpo_rows(examples)),
        processing_class=processor,
        callbacks=[printer, CheckpointNamer(checkpoint_dir, schedule.updates_per_step)],
    )
    trainer.remove_callback(PrinterCallback)  # our line per step replaces its raw dict dumps
    wandb_url = _wandb_url() if "wandb" in spec.logger else None
    if latest:
        print(f"resuming from {latest[1].name}", flush=True)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(latest[1]) if latest else None)
    elapsed = time.perf_counter() - started
    if "wandb" in spec.logger:
        wandb_url = _wandb_url(finish=True) or wandb_url

    # result
    latest_after = latest_local_checkpoint(checkpoint_dir)
    end_step = latest_after[0] if latest_after else start_step
    history = printer.history
    step_seconds = [h["seconds_per_step"] for h in history if h.get("seconds_per_step") == h.get("seconds_per_step")]
    result = EngineResult(
        start_step=start_step,
        end_step=end_step,
        steps_done=end_step - start_step,
        final_metrics={k: v for k, v in (history[-1] if history else {}).items() if k != "step" and v is not None},
        history=history,
        seconds_per_step=(sum(step_seconds) / len(step_seconds)) if step_seconds else None,
        train_seconds=elapsed,
        wandb_url=wandb_url,
        warmup_steps=0 if start_model == str(config.model_dir) else spec.sft_warmup_steps,
    )
    shutil.rmtree(checkpoint_dir / "trainer", ignore_errors=True)
    if config.result_path:
        Path(config.result_path).write_bytes(result.to_json())
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m grounding_ops.training.cpu_engine", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config", required=True, help="engine configuration JSON written by the runner")
    args = parser.parse_args(argv)
    try:
        result = run(EngineConfig.load(args.config))
    except (EngineError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    seconds = result.seconds_per_step
    print(
        f"cpu engine finished: steps {result.start_step}->{result.end_step}"
        + (f", {seconds:.2f}s per step" if seconds else ""),
        flush=True,
    )
    return 0 if result.steps_done > 0 else 3


if __name__ == "__main__":
    sys.exit(main())
