"""VeRL 0.9.1's own RLHFDataset loads the exported parquet, and the recorded resized size
is the image grid its processor produces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grounding_ops.data.images import ImageResolver
from grounding_ops.data.prepare import VALID, PrepareSettings, valid_row, write_parquet
from grounding_ops.data.readers import read_records
from grounding_ops.data.synthetic import generate_synthetic
from grounding_ops.tiny_models import MAX_PIXELS, MIN_PIXELS, build_tiny_model

pytestmark = pytest.mark.ml


@pytest.fixture(scope="module")
def processor(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoProcessor

    folder = build_tiny_model(tmp_path_factory.mktemp("tiny"), family="qwen2.5-vl", seed=0)
    return AutoProcessor.from_pretrained(folder)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("data")
    # Sizes on both sides of the pixel bounds: upscaled (small), downscaled (large), odd aspect ratios.
    data = generate_synthetic(base / "syn", n_images=12, seed=3, min_size=40, max_size=300)
    settings = PrepareSettings(protocol="qwen2.5-vl", val_fraction=0.25, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    # The Great Expectations stage runs in the platform environment (tested there); here the rows it
    # accepts are built the same way, and the export path under test is the real one.
    resolver = ImageResolver(data.images_root)
    work = base / "work"
    work.mkdir()
    with open(work / VALID, "w") as handle:
        for record in read_records(data.annotations):
            check = resolver.check(record.image, settings.max_image_pixels)
            assert check.ok, check.detail
            handle.write(json.dumps(valid_row(record, record.boxes, check)) + "\n")
    counts = write_parquet(work, base, settings, resolver)
    assert counts["train"] > 0 and counts["val"] > 0
    return base


def test_rlhf_dataset_loads_rows_and_resized_size_matches_processor(dataset: Path, processor, tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from verl.utils.dataset.rl_dataset import RLHFDataset

    config = OmegaConf.create({
        "cache_dir": str(tmp_path / "cache"),
        "prompt_key": "prompt",
        "image_key": "images",
        "max_prompt_length": 4096,
        "filter_overlong_prompts": True,
        "filter_overlong_prompts_workers": None,  # in-process: forking after torch ran can deadlock
        "return_raw_chat": True,
    })
    for split in ("train.parquet", "val.parquet"):
        ds = RLHFDataset(str(dataset / split), tokenizer=processor.tokenizer, config=config, processor=processor)
        assert len(ds) > 0  # nothing was filtered out as unprocessable
        sizes = set()
        for i in range(len(ds)):
            row = ds[i]
            messages = row["raw_prompt"]
            images, _, _ = RLHFDataset._process_multi_modal_info(messages, ds.image_patch_size, config)
            assert len(images) == 1
            text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            inputs = processor(text=[text], images=images, return_tensors="pt")
            _, grid_h, grid_w = (int(v) for v in inputs["image_grid_thw"][0])
            extra = row["extra_info"]
            truth = row["reward_model"]["ground_truth"]
            assert [grid_w * 14, grid_h * 14] == list(extra["resized_size"]) == list(truth["resized_size"])
            assert list(images[0].size) == list(extra["resized_size"])
            assert truth["boxes"] and extra["split"] == split.split(".")[0] and extra["index"] == i
            assert row["data_source"] == "grounding/synthetic"
            sizes.add(tuple(extra["image_size"]))
        assert len(sizes) > 1
