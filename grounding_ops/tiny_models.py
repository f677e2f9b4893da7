"""Tiny random-weight Qwen2-VL / Qwen2.5-VL models, built locally for tests and the demo.

:func:`build_tiny_model` writes a Hugging Face folder that loads with
``AutoModelForImageTextToText.from_pretrained`` and ``AutoProcessor.from_pretrained``
without any hub access: a model config with consistent (tiny) dimensions and random
weights, and a real Qwen2-VL / Qwen2.5-VL processor whose byte-level BPE tokenizer is
trained here, on a small corpus of the grounding task's text, with the Qwen special
tokens and the Qwen2-VL chat template.

The command line: ``grounding-ops tiny-model --family qwen2.5-vl --output DIR``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

FAMILIES = ("qwen2.5-vl", "qwen2-vl")

# Qwen's special tokens, in the order of their ids in the real tokenizers.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The chat template of Qwen2-VL-Instruct (also used by Qwen2.5-VL-Instruct).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Images are resized to 56x56 .. 112x112 pixels: 4 to 16 patches of 14 pixels, 1 to 4
# image tokens after the 2x2 merge.
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
MIN_PIXELS = 56 * 56
MAX_PIXELS = 112 * 112

VOCAB_SIZE = 1024  # BPE vocabulary including the byte alphabet and special tokens
TEXT_HIDDEN = 64
TEXT_HEADS = 4
TEXT_KV_HEADS = 2
HEAD_DIM = TEXT_HIDDEN // TEXT_HEADS  # 16
MROPE_SECTION = [2, 3, 3]  # temporal, height, width; sums to HEAD_DIM / 2
VISION_DIM = 32
VISION_HEADS = 2


def _corpus() -> list[str]:
    """Text of the grounding task: instructions, answer formats, phrases, numbers, JSON."""
    phrases = [
        "the red square",
        "the blue circle",
        "the green triangle",
        "the yellow star",
        "the cat",
        "the dog",
        "the person on the left",
        "the car",
        "the tree",
        "the button labelled OK",
        "the search box",
        "the largest object",
        "the small white box",
        "the black label",
    ]
    lines: list[str] = [
        "You are a helpful assistant.",
        "Locate {phrase} in the image and output its bounding box.",
        "Output the bounding box of {phrase} in JSON format.",
        'Answer with JSON: [{"bbox_2d": [x1, y1, x2, y2], "label": "..."}]',
        "Detect {phrase}. Report the bbox coordinates in JSON format.",
        "Give the box as <|box_start|>(x1,y1),(x2,y2)<|box_end|> with coordinates in 0-1000.",
        "Click on {phrase}. Answer <click>x, y, width, height</click>.",
        "Output normalized coordinates [x1, y1, x2, y2] between 0 and 1.",
        "Where in this image is {phrase}?",
        "There is no such object in the image.",
    ]
    text: list[str] = ["system\n", "user\n", "assistant\n"] * 4
    for phrase in phrases:
        for line in lines:
            text.append(line.replace("{phrase}", phrase))
        text.append(f"<|object_ref_start|>{phrase}<|object_ref_end|>")
    for i in range(0, 1000, 7):
        a, b, c, d = i, (i * 3) % 1000, (i * 7) % 1000, (i * 11) % 1000
        text.append(f'```json\n[\n\t{{"bbox_2d": [{a}, {b}, {c}, {d}], "label": "object"}}\n]\n```')
        text.append(f'{{"bbox_2d": [{a}, {b}, {c}, {d}]}}')
        text.append(f"({a},{b}),({c},{d})")
        text.append(f"<click>{a}, {b}, {c}, {d}</click>")
        text.append(f"[{a / 1000:.3f}, {b / 1000:.3f}, {c / 1000:.3f}, {d / 1000:.3f}]")
    text.append("0 1 2 3 4 5 6 7 8 9 0.0 0.5 1.0 , . : ; [ ] { } ( ) < > \" ' - _ / \\ \n \t")
    return text


def _train_tokenizer(seed: int) -> Any:
    """A Qwen2Tokenizer whose byte-level BPE was trained here on :func:`_corpus`."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    del seed  # BPE training is deterministic for a given corpus
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in model["merges"]]
    # Special tokens get the ids right after the BPE vocabulary, as in Qwen's tokenizers.
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    qwen = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=4096,
        chat_template=CHAT_TEMPLATE,
    )
    qwen.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    return qwen


def _model_config(family: str, tokenizer: Any) -> Any:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab_size = len(tokenizer)
    text: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": 2 * TEXT_HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": TEXT_HEADS,
        "num_key_value_heads": TEXT_KV_HEADS,
        "max_position_embeddings": 4096,
        "max_window_layers": 2,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": MROPE_SECTION},
        "bos_token_id": None,  # Qwen's tokenizers add no BOS token
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "tie_word_embeddings": True,
    }
    common = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": True,
    }
    if family == "qwen2.5-vl":
        from transformers import Qwen2_5_VLConfig

        vision = {
            "depth": 2,
            "hidden_size": VISION_DIM,
            "intermediate_size": 2 * VISION_DIM,
            "num_heads": VISION_HEADS,
            "out_hidden_size": TEXT_HIDDEN,
            "patch_size": PATCH_SIZE,
            "spatial_merge_size": MERGE_SIZE,
            "temporal_patch_size": TEMPORAL_PATCH_SIZE,
            "window_size": 112,
            "fullatt_block_indexes": [1],
        }
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **common)
    from transformers import Qwen2VLConfig

    vision = {
        "depth": 2,
        "embed_dim": VISION_DIM,
        "hidden_size": TEXT_HIDDEN,
        "mlp_ratio": 2,
        "num_heads": VISION_HEADS,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
    }
    return Qwen2VLConfig(text_config=text, vision_config=vision, **common)


def _processor(family: str, tokenizer: Any) -> Any:
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    pixels = {"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS}
    geometry = {"patch_size": PATCH_SIZE, "merge_size": MERGE_SIZE, "temporal_patch_size": TEMPORAL_PATCH_SIZE}
    size = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    image_processor = Qwen2VLImageProcessor(size=size, **pixels, **geometry)
    video_processor = Qwen2VLVideoProcessor(size=size, **pixels, **geometry)
    if family == "qwen2.5-vl":
        from transformers import Qwen2_5_VLProcessor as Processor
    else:
        from transformers import Qwen2VLProcessor as Processor
    return Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_model(out_dir: str | Path, family: str = "qwen2.5-vl", seed: int = 0) -> Path:
    """Write a tiny random ``family`` model with its processor to ``out_dir``; return the folder."""
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of: {', '.join(FAMILIES)}")
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(seed)
    config = _model_config(family, tokenizer)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config)
    finally:
        torch.random.set_rng_state(generator_state)
    model.generation_config = GenerationConfig(
        eos_token_id=[config.text_config.eos_token_id, config.text_config.pad_token_id],
        pad_token_id=config.text_config.pad_token_id,
        do_sample=False,
    )
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    _processor(family, tokenizer).save_pretrained(out)
    return out


def count_parameters(model_dir: str | Path) -> int:
    """Number of parameters of a saved model (reads the safetensors headers, no torch needed)."""
    total = 0
    for path in Path(model_dir).glob("*.safetensors"):
        with open(path, "rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(header_len))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            count = 1
            for dim in meta["shape"]:
                count *= dim
            total += count
    return total


def _run(args: argparse.Namespace) -> int:
    path = build_tiny_model(args.output, family=args.family, seed=args.seed)
    print(f"wrote tiny {args.family} model ({count_parameters(path):,} parameters) to {path}")
    return 0


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tiny-model",
        help="build a tiny random Qwen2-VL / Qwen2.5-VL model folder for tests and demos",
        description="Write a tiny random-weight vision-language model with a locally trained "
        "tokenizer and a real processor (no download).",
    )
    parser.add_argument("--family", choices=FAMILIES, default="qwen2.5-vl")
    parser.add_argument("--output", required=True, help="folder to write the model to")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.set_defaults(func=_run)
