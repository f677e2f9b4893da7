"""Greedy answer generation for evaluation: transformers on CPU, vLLM on GPU nodes.

Both engines build the prompt exactly as training does: the chat messages of
:func:`grounding_ops.protocols.build_prompt` (the same function the data export
uses), the ``<image>`` placeholder turned into an image content item (as VeRL's
``RLHFDataset`` does), then the processor's chat template with the generation
prompt. The image is resized to the ``resized_size`` recorded at export, which is
what the training rollout fed the model and the frame the answers' pixel
coordinates refer to.

torch, transformers and vllm are imported inside the functions that need them.
"""

from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence
from grounding_ops.vocabulary import GENERATION_ENGINES

ENGINES: tuple[str, ...] = GENERATION_ENGINES
DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_BATCH_SIZE = 8

_PLACEHOLDER = re.compile(r"(<image>)")


class EngineUnavailableError(RuntimeError):
    """The engine's packages are missing here; the message names where it runs."""


@dataclass(frozen=True)
class GenerationRequest:
    """One question: the chat messages (with ``<image>`` placeholders) and the image bytes."""

    id: str
    messages: list[dict[str, Any]]
    image_bytes: bytes
    resized_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class GenerationOutput:
    responses: list[str]
    seconds: float
    engine: str
    batch_size: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def samples_per_s(self) -> float:
        return len(self.responses) / self.seconds if self.seconds > 0 else float("inf")


_ENGINE_PACKAGES = {"transformers": ("torch", "transformers"), "vllm": ("vllm", "transformers")}


def check_engine(engine: str) -> None:
    """Fail early, before any download, when ``engine`` cannot run in this environment."""
    import importlib.util

    if engine not in _ENGINE_PACKAGES:
        raise ValueError(f"unknown engine {engine!r}; use one of: {', '.join(ENGINES)}")
    missing = [name for name in _ENGINE_PACKAGES[engine] if importlib.util.find_spec(name) is None]
    if missing:
        where = (
            "a GPU node's trainer image" if engine == "vllm" else "the ML environment (.venv-ml) or the trainer image"
        )
        raise EngineUnavailableError(
            f"the {engine} engine needs {', '.join(missing)}, which this environment lacks: run the evaluation in {where}"
        )


def structured_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with each ``<image>`` placeholder turned into ``{"type": "image"}`` items.

    Mirrors VeRL's ``RLHFDataset._build_messages`` so the chat template renders the
    same vision tokens as in training. Messages without placeholders keep their text.
    """
    out: list[dict[str, Any]] = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, str) or "<image>" not in content:
            out.append(dict(message))
            continue
        items: list[dict[str, Any]] = []
        for segment in _PLACEHOLDER.split(content):
            if segment == "":
                continue
            if segment == "<image>":
                items.append({"type": "image"})
            else:
                items.append({"type": "text", "text": segment})
        out.append({**message, "content": items})
    return out


def count_images(messages: Sequence[dict[str, Any]]) -> int:
    return sum(str(m.get("content", "")).count("<image>") for m in messages if isinstance(m.get("content"), str))


def load_image(data: bytes, resized_size: Sequence[int] | None = None) -> Any:
    """The RGB PIL image the model sees: decoded, resized to ``resized_size`` when given."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    image = image.convert("RGB")
    if resized_size is not None:
        width, height = int(resized_size[0]), int(resized_size[1])
        if image.size != (width, height):
            # Same call as qwen_vl_utils.fetch_image, which the training rollout uses.
            image = image.resize((width, height))
    return image


def render_prompts(processor: Any, requests: Sequence[GenerationRequest]) -> list[str]:
    """Chat-template text for every request (generation prompt appended)."""
    prompts = []
    for request in requests:
        if count_images(request.messages) != 1:
            raise ValueError(
                f"sample {request.id}: the prompt must hold exactly one <image> placeholder, "
                f"found {count_images(request.messages)}"
            )
        prompts.append(
            processor.apply_chat_template(
                structured_messages(request.messages), add_generation_prompt=True, tokenize=False
            )
        )
    return prompts


def _batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclass(frozen=True)
class TransformersModel:
    """A Hugging Face image-text-to-text model and its processor, loaded for greedy generation."""

    model: Any
    processor: Any
    device: str
    dtype: str


def load_transformers(model_dir: str | Path, *, device: str = "cpu", dtype: str = "float32") -> TransformersModel:
    """Load the model folder for :func:`generate_loaded` (left padding, a pad token)."""
    try:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor
    except ImportError as exc:
        raise EngineUnavailableError(
            f"the transformers engine needs torch and transformers ({exc.name} is missing): run the "
            "evaluation in the ML environment (.venv-ml) or the trainer image"
        ) from exc

    processor = AutoProcessor.from_pretrained(str(model_dir))
    processor.tokenizer.padding_side = "left"
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    model = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=getattr(torch, dtype))
    model.to(device)
    model.eval()
    return TransformersModel(model, processor, device, dtype)


def generate_loaded(
    loaded: TransformersModel,
    requests: Sequence[GenerationRequest],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    progress: Callable[[int, int], None] | None = None,
) -> GenerationOutput:
    """Greedy batched ``generate`` with a loaded model (see :func:`generate_transformers`)."""
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model, processor, device = loaded.model, loaded.processor, loaded.device
    pad_id = processor.tokenizer.pad_token_id
    eos_id = model.generation_config.eos_token_id
    if eos_id is None:
        eos_id = processor.tokenizer.eos_token_id

    responses: list[str] = []
    start = time.perf_counter()
    for batch in _batches(list(requests), batch_size):
        prompts = render_prompts(processor, batch)
        images = [load_image(r.image_bytes, r.resized_size) for r in batch]
        inputs = processor(text=prompts, images=images, return_tensors="pt", padding=True).to(device)
        with torch.inference_mode():
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad_id,
                eos_token_id=eos_id,
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        responses.extend(
            processor.batch_decode(new_tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        )
        if progress is not None:
            progress(len(responses), len(requests))
    seconds = time.perf_counter() - start
    return GenerationOutput(responses, seconds, "transformers", batch_size, {"device": device, "dtype": loaded.dtype})


def generate_transformers(
    model_dir: str | Path,
    requests: Sequence[GenerationRequest],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    device: str = "cpu",
    dtype: str = "float32",
    progress: Callable[[int, int], None] | None = None,
) -> GenerationOutput:
    """Greedy batched ``generate`` with a Hugging Face image-text-to-text model.

    Prompts are left-padded so every sequence in a batch ends where generation starts.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    loaded = load_transformers(model_dir, device=device, dtype=dtype)
    return generate_loaded(loaded, requests, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress)


def generate_vllm(
    model_dir: str | Path,
    requests: Sequence[GenerationRequest],
    *,
    batch_size: int = 256,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.85,
    max_model_len: int = 8192,
    progress: Callable[[int, int], None] | None = None,
) -> GenerationOutput:
    """Greedy offline batched generation with vLLM on a GPU node.

    The prompt text comes from the model's own processor chat template (as in the
    transformers engine and in training) and the image goes in ``multi_modal_data``
    already resized, so vLLM's processor sees the same pixels as the training rollout.
    ``batch_size`` is the number of requests handed to one ``LLM.generate`` call;
    vLLM schedules them with continuous batching.
    """
    try:
        from vllm import LLM, SamplingParams
    except ImportError as exc:  # pragma: no cover - only on GPU images
        raise EngineUnavailableError(
            "the vllm engine needs the vllm package (the VeRL trainer image has it); "
            "use --engine transformers on machines without a GPU"
        ) from exc
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(model_dir))
    llm = LLM(
        model=str(model_dir),
        tensor_parallel_size=tensor_parallel_size,
        gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len,
        limit_mm_per_prompt={"image": 1},
        seed=0,
    )
    sampling = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=max_new_tokens, n=1)
    responses: list[str] = []
    start = time.perf_counter()
    for batch in _batches(list(requests), max(1, batch_size)):
        prompts = render_prompts(processor, batch)
        inputs = [
            {"prompt": prompt, "multi_modal_data": {"image": load_image(r.image_bytes, r.resized_size)}}
            for prompt, r in zip(prompts, batch)
        ]
        outputs = llm.generate(inputs, sampling_params=sampling, use_tqdm=False)
        responses.extend(out.outputs[0].text for out in outputs)
        if progress is not None:
            progress(len(responses), len(requests))
    seconds = time.perf_counter() - start
    return GenerationOutput(responses, seconds, "vllm", batch_size, {"tensor_parallel_size": tensor_parallel_size})


def generate(
    engine: str,
    model_dir: str | Path,
    requests: Sequence[GenerationRequest],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    progress: Callable[[int, int], None] | None = None,
) -> GenerationOutput:
    """Dispatch to the engine called ``engine`` (one of :data:`ENGINES`)."""
    if engine == "transformers":
        return generate_transformers(
            model_dir, requests, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress
        )
    if engine == "vllm":
        return generate_vllm(
            model_dir, requests, batch_size=batch_size, max_new_tokens=max_new_tokens, progress=progress
        )
    raise ValueError(f"unknown engine {engine!r}; use one of: {', '.join(ENGINES)}")
