"""Exported rows through verl 0.9.1's own dataset, vision processing and collate, with tiny
Qwen2.5-VL and Qwen3-VL processors: the pixel grid the model sees is the exported
``resized_size`` (factor 28 and 32), the row carries the image already at that size, the ground
truth keeps the original size, and a spec whose pixel bounds differ from the dataset's is refused
before VeRL would resize every image a second time."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
from pathlib import Path

import pytest

pytest.importorskip("verl")

from hydra import compose, initialize_config_dir  # noqa: E402

from grounding_ops.training.presets import get_preset  # noqa: E402
from grounding_ops.training.verl_overrides import RunPaths, render_overrides  # noqa: E402
from grounding_ops.training.verl_preflight import DatasetMismatch, check_dataset, prompt_token_bound  # noqa: E402

pytestmark = pytest.mark.ml

MIN_PIXELS, MAX_PIXELS = 3136, 12544  # the tiny models' bounds: synthetic images up to 300 px get resized


def _compose(overrides: list[str]):
    """verl's config for our overrides; the filter runs in this process (datasets' worker processes,
    forked from a pytest process with torch threads, can hang)."""
    import verl

    overrides = [o for o in overrides if not o.startswith("data.filter_overlong_prompts_workers=")]
    overrides.append("data.filter_overlong_prompts_workers=null")  # None: no worker pool (datasets pools from 1)
    config_dir = str(Path(verl.__file__).resolve().parent / "trainer" / "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


def _export(base: Path, family: str, protocol: str) -> tuple[Path, dict]:
    """Synthetic images exported by the real prepare code for ``family``; returns train parquet + manifest."""
    from grounding_ops.data.images import ImageResolver
    from grounding_ops.data.prepare import VALID, PrepareSettings, valid_row, write_parquet
    from grounding_ops.data.readers import read_records
    from grounding_ops.data.synthetic import generate_synthetic

    data = generate_synthetic(base / "syn", n_images=8, seed=5, min_size=90, max_size=300)
    settings = PrepareSettings(
        protocol=protocol, model_family=family, val_fraction=0.0, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS
    )
    settings.check()
    resolver = ImageResolver(data.images_root)
    work, export = base / "work", base / "export"
    work.mkdir(parents=True)
    export.mkdir(parents=True)
    with open(work / VALID, "w") as handle:
        for record in read_records(data.annotations):
            check = resolver.check(record.image, settings.max_image_pixels)
            handle.write(json.dumps(valid_row(record, record.boxes, check)) + "\n")
    write_parquet(work, export, settings, resolver)
    return export / "train.parquet", {"protocol": protocol, "settings": settings.to_json()}


def _processor(family: str, tiny_dir: Path):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(tiny_dir))
    if family == "qwen2.5-vl":
        return processor
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    geometry = {"patch_size": 16, "merge_size": 2, "temporal_patch_size": 2}
    size = {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS}
    return Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, **geometry),
        video_processor=Qwen3VLVideoProcessor(size=size, **geometry),
        tokenizer=processor.tokenizer,
        chat_template=processor.chat_template,
    )


def _spec(tiny_dir: Path, **changes):
    values = {
        "model": str(tiny_dir),
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
        "max_prompt_length": 512,
        "gpus_per_node": 1,
        "train_batch_size": 8,
        "ppo_mini_batch_size": 8,
        **changes,
    }
    return dataclasses.replace(get_preset("qwen2.5-vl-3b"), **values).validate()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from grounding_ops.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen25", family="qwen2.5-vl")


@pytest.mark.parametrize(
    ("family", "protocol", "patch"), [("qwen2.5-vl", "qwen2.5-vl", 14), ("qwen3-vl", "qwen3-vl", 16)]
)
def test_the_model_sees_the_exported_resized_size(
    family: str, protocol: str, patch: int, tiny_dir: Path, tmp_path: Path
) -> None:
    from PIL import Image
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn
    from verl.utils.tokenizer import build_multimodal_processor_inputs

    train, manifest = _export(tmp_path, family, protocol)
    spec = _spec(tiny_dir, model_family=family, protocol=protocol)
    fit = check_dataset(spec, manifest, train, None)  # the runner's pre-flight accepts it
    assert fit.train.fitting == fit.train.rows > 0
    cfg = _compose(render_overrides(spec, RunPaths(str(train), None, str(tmp_path / "ckpt"), str(tiny_dir))))
    processor = _processor(family, tiny_dir)
    dataset = RLHFDataset([str(train)], processor.tokenizer, cfg.data, processor)
    assert len(dataset) == fit.train.rows  # nothing filtered, as the pre-flight said
    resized_any = False
    for index in range(len(dataset)):
        row = dataset.dataframe[index]
        truth = row["reward_model"]["ground_truth"]
        stored = Image.open(io.BytesIO(row["images"][0]["bytes"]))
        assert list(stored.size) == truth["resized_size"]  # the row carries the small image
        resized_any |= truth["image_size"] != truth["resized_size"]  # and keeps the original size
        assert all(v % (2 * patch) == 0 for v in truth["resized_size"])

        item = dataset[index]
        images, _ = asyncio.run(
            RLHFDataset.process_vision_info(item["raw_prompt"], cfg.data.image_patch_size, cfg.data)
        )
        text = processor.apply_chat_template(item["raw_prompt"], add_generation_prompt=True, tokenize=False)
        inputs = build_multimodal_processor_inputs(
            processor, text=[text], images=images, mm_processor_kwargs=cfg.data.mm_processor_kwargs
        )
        _, grid_h, grid_w = (int(v) for v in inputs["image_grid_thw"][0])
        assert [grid_w * patch, grid_h * patch] == truth["resized_size"]
        assert len(inputs["input_ids"][0]) <= prompt_token_bound(row["prompt"], truth["resized_size"], 2 * patch)
    assert resized_any
    batch = collate_fn([dataset[0], dataset[1]])
    assert len(batch["raw_prompt"]) == 2


def test_a_spec_with_other_pixel_bounds_is_refused_before_verl_resizes_again(tiny_dir: Path, tmp_path: Path) -> None:
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl.utils.tokenizer import build_multimodal_processor_inputs

    train, manifest = _export(tmp_path, "qwen2.5-vl", "qwen2.5-vl")
    spec = _spec(tiny_dir, max_pixels=MAX_PIXELS // 2)
    with pytest.raises(DatasetMismatch, match=f"exported with min_pixels={MIN_PIXELS}, max_pixels={MAX_PIXELS}"):
        check_dataset(spec, manifest, train, None)
    # what verl would do with those bounds: the model would see another size than the answers' frame
    cfg = _compose(render_overrides(spec, RunPaths(str(train), None, str(tmp_path / "ckpt"), str(tiny_dir))))
    processor = _processor("qwen2.5-vl", tiny_dir)
    dataset = RLHFDataset([str(train)], processor.tokenizer, cfg.data, processor)
    moved = 0
    for index in range(len(dataset)):
        item = dataset[index]
        images, _ = asyncio.run(RLHFDataset.process_vision_info(item["raw_prompt"], 14, cfg.data))
        text = processor.apply_chat_template(item["raw_prompt"], add_generation_prompt=True, tokenize=False)
        grid = build_multimodal_processor_inputs(
            processor, text=[text], images=images, mm_processor_kwargs=cfg.data.mm_processor_kwargs
        )["image_grid_thw"][0]
        moved += [int(grid[2]) * 14, int(grid[1]) * 14] != dataset.dataframe[index]["reward_model"]["ground_truth"][
            "resized_size"
        ]
    assert moved > 0


def test_a_dataset_resized_for_qwen2_is_refused_for_qwen3(tiny_dir: Path, tmp_path: Path) -> None:
    train, manifest = _export(tmp_path, "qwen2.5-vl", "qwen2.5-vl")
    manifest["settings"].pop("model_family")  # a dataset exported before the family was recorded
    manifest["protocol"] = manifest["settings"]["protocol"] = "qwen3-vl"
    spec = _spec(tiny_dir, model_family="qwen3-vl", protocol="qwen3-vl")
    with pytest.raises(
        DatasetMismatch, match="resized for qwen2.5-vl .factor 28. but the spec trains qwen3-vl .factor 32."
    ):
        check_dataset(spec, manifest, train, None)
