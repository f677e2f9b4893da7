"""The tiny models load through the Auto classes offline, process an image prompt and generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grounding_ops.tiny_models import FAMILIES, MAX_PIXELS, SPECIAL_TOKENS, build_tiny_model, count_parameters

pytestmark = pytest.mark.ml


@pytest.fixture(scope="module", params=FAMILIES)
def tiny_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    family = request.param
    return family, build_tiny_model(tmp_path_factory.mktemp(family.replace(".", "")), family=family, seed=0)


def test_config_dims_are_consistent(tiny_model: tuple[str, Path]) -> None:
    family, path = tiny_model
    config = json.loads((path / "config.json").read_text())
    text = config["text_config"]
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    assert sum(text["rope_parameters"]["mrope_section"]) == head_dim // 2
    assert text["num_attention_heads"] % text["num_key_value_heads"] == 0
    vision = config["vision_config"]
    assert vision["patch_size"] == 14 and vision["spatial_merge_size"] == 2
    out_dim = vision["out_hidden_size"] if family == "qwen2.5-vl" else vision["hidden_size"]
    assert out_dim == text["hidden_size"]
    assert 100_000 <= count_parameters(path) <= 1_000_000


def test_loads_offline_and_generates(tiny_model: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    family, path = tiny_model
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path)
    expected = "Qwen2_5_VLProcessor" if family == "qwen2.5-vl" else "Qwen2VLProcessor"
    assert type(processor).__name__ == expected

    tokenizer = processor.tokenizer
    for token in SPECIAL_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == token
    answer = '{"bbox_2d": [12, 345, 678, 999], "label": "the red square"}'
    assert tokenizer.decode(tokenizer.encode(answer, add_special_tokens=False)) == answer

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Locate the cat."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\n")
    assert "<|vision_start|><|image_pad|><|vision_end|>Locate the cat.<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")

    image = Image.new("RGB", (300, 200), (200, 30, 30))
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    t, h, w = inputs["image_grid_thw"][0].tolist()
    assert t == 1 and h * w * 14 * 14 <= MAX_PIXELS
    n_image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert n_image_tokens == h * w // 4

    torch.manual_seed(0)
    output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    assert 1 <= len(new_tokens) <= 5


def test_same_seed_same_weights(tmp_path: Path) -> None:
    a = build_tiny_model(tmp_path / "a", family="qwen2-vl", seed=3)
    b = build_tiny_model(tmp_path / "b", family="qwen2-vl", seed=3)
    c = build_tiny_model(tmp_path / "c", family="qwen2-vl", seed=4)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()


def test_unknown_family_names_the_valid_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="qwen2.5-vl, qwen2-vl"):
        build_tiny_model(tmp_path, family="llava")


def test_cli_builds_a_model(tmp_path: Path) -> None:
    from grounding_ops.cli import main

    assert main(["tiny-model", "--family", "qwen2-vl", "--output", str(tmp_path / "m"), "--seed", "1"]) == 0
    assert (tmp_path / "m" / "config.json").is_file()
    assert (tmp_path / "m" / "tokenizer.json").is_file()
