"""VeRL 0.9.1's own RLHFDataset loads the exported parquet, and the recorded resized size
is the image grid its processor produces."""

from __future__ import annotations

from pathlib import Path

import pytest

from grounding_ops.data.synthetic import publish_synthetic_version
from grounding_ops.tiny_models import build_tiny_model

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
    # The Great Expectations stage runs in the platform environment (tested there); the export
    # path under test here is the real one.
    uri, counts = publish_synthetic_version(
        base, version="v-verl", n_images=12, seed=3, val_fraction=0.25, min_size=40, max_size=300
    )
    assert counts["train"] > 0 and counts["val"] > 0
    return Path(uri) / "v-verl"


def test_rlhf_dataset_loads_rows_and_resized_size_matches_processor(dataset: Path, processor, tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from verl.utils.dataset.rl_dataset import RLHFDataset

    config = OmegaConf.create(
        {
            "cache_dir": str(tmp_path / "cache"),
            "prompt_key": "prompt",
            "image_key": "images",
            "max_prompt_length": 4096,
            "filter_overlong_prompts": True,
            "filter_overlong_prompts_workers": None,  # in-process: forking after torch ran can deadlock
            "return_raw_chat": True,
        }
    )
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
