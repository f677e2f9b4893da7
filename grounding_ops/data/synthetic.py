"""A small synthetic grounding dataset with real images, for the demo, tests and benchmarks.

Each image is a plain or noisy background with a few coloured shapes drawn by Pillow;
each shape gives a record "the red circle" with its pixel box (shapes of the same
colour and kind in one image share a record with several boxes). Output: an images
folder and a canonical JSONL file.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 170),
}
SHAPES = ("circle", "square", "triangle")
SOURCE = "synthetic"


@dataclass(frozen=True)
class SyntheticDataset:
    images_root: Path
    annotations: Path
    n_images: int
    n_records: int
    n_invalid: int


def _draw_shape(draw: Any, shape: str, color: tuple[int, int, int], box: tuple[int, int, int, int]) -> None:
    x1, y1, x2, y2 = box
    if shape == "circle":
        draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=color)
    elif shape == "square":
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=color)
    else:
        draw.polygon([((x1 + x2) / 2, y1), (x2 - 1, y2 - 1), (x1, y2 - 1)], fill=color)


def _overlaps(box: tuple[int, int, int, int], others: list[tuple[int, int, int, int]]) -> bool:
    return any(not (box[2] <= o[0] or o[2] <= box[0] or box[3] <= o[1] or o[3] <= box[1]) for o in others)


def render_image(rng: random.Random, width: int, height: int, n_shapes: int) -> tuple[Any, list[tuple[str, str, list[int]]]]:
    """One image and its shapes as ``(color, shape, [x1, y1, x2, y2])``."""
    from PIL import Image, ImageDraw

    background = tuple(rng.randint(200, 255) for _ in range(3))
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(0, 6)):  # faint clutter lines
        draw.line([(rng.randrange(width), rng.randrange(height)), (rng.randrange(width), rng.randrange(height))],
                  fill=tuple(max(0, c - 40) for c in background), width=1)
    placed: list[tuple[int, int, int, int]] = []
    shapes: list[tuple[str, str, list[int]]] = []
    for _ in range(n_shapes):
        for _attempt in range(20):
            side = rng.randint(max(8, min(width, height) // 6), max(9, min(width, height) // 3))
            x1, y1 = rng.randint(0, width - side), rng.randint(0, height - side)
            box = (x1, y1, x1 + side, y1 + side)
            if not _overlaps(box, placed):
                break
        else:
            continue
        color, shape = rng.choice(sorted(COLORS)), rng.choice(SHAPES)
        _draw_shape(draw, shape, COLORS[color], box)
        placed.append(box)
        shapes.append((color, shape, list(box)))
    return image, shapes


def generate_synthetic(out_dir: str | Path, *, n_images: int = 24, seed: int = 0, min_size: int = 64,
                       max_size: int = 160, max_shapes: int = 3, n_invalid: int = 0,
                       patients: int | None = None) -> SyntheticDataset:
    """Write ``out_dir/images/*.png`` and ``out_dir/annotations.jsonl``.

    ``n_invalid`` adds that many deliberately broken rows (box outside the image, missing
    image, empty phrase, ...) to show the quarantine. ``patients`` groups images into that
    many groups (default: two images per group) to exercise the group split.
    """
    rng = random.Random(seed)
    root = Path(out_dir)
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    annotations = root / "annotations.jsonl"
    n_groups = patients or max(1, n_images // 2)
    records = 0
    with open(annotations, "w", encoding="utf-8") as handle:
        for index in range(n_images):
            width, height = rng.randint(min_size, max_size), rng.randint(min_size, max_size)
            image, shapes = render_image(rng, width, height, rng.randint(1, max_shapes))
            name = f"img_{index:05d}.png"
            image.save(images_dir / name, format="PNG")
            grouped: dict[tuple[str, str], list[list[int]]] = {}
            for color, shape, box in shapes:
                grouped.setdefault((color, shape), []).append(box)
            for k, ((color, shape), boxes) in enumerate(sorted(grouped.items())):
                record = {
                    "id": f"syn-{index:05d}-{k}",
                    "image": f"images/{name}",
                    "phrase": f"the {color} {shape}",
                    "boxes": boxes,
                    "width": width,
                    "height": height,
                    "source": SOURCE,
                    "group": f"patient-{index % n_groups:04d}",
                }
                handle.write(json.dumps(record) + "\n")
                records += 1
        broken = [
            {"id": "bad-outside", "image": "images/img_00000.png", "phrase": "the box outside", "boxes": [[0, 0, 10_000, 10]]},
            {"id": "bad-missing", "image": "images/does_not_exist.png", "phrase": "a missing image", "boxes": [[0, 0, 5, 5]]},
            {"id": "bad-phrase", "image": "images/img_00000.png", "phrase": "", "boxes": [[0, 0, 5, 5]]},
            {"id": "bad-order", "image": "images/img_00000.png", "phrase": "x2 before x1", "boxes": [[20, 0, 5, 5]]},
            {"id": "bad-escape", "image": "../outside.png", "phrase": "path traversal", "boxes": [[0, 0, 5, 5]]},
        ]
        for i in range(n_invalid):
            row = dict(broken[i % len(broken)], source=SOURCE)
            row["id"] = f"{row['id']}-{i}"
            handle.write(json.dumps(row) + "\n")
    return SyntheticDataset(images_dir.parent, annotations, n_images, records + n_invalid, n_invalid)


def publish_synthetic_version(base: str | Path, *, version: str, n_images: int, seed: int, val_fraction: float,
                              test_fraction: float = 0.0, min_size: int = 56, max_size: int = 140, protocol: str = "qwen2.5-vl",
                              store_uri: str | None = None, s3_client: Any | None = None) -> tuple[str, dict[str, int]]:
    """Generate, export and publish a synthetic dataset version for the tiny models, without GX.

    For the trainer environment, which has no Great Expectations: the synthetic rows are valid
    by construction, and every image still goes through the real image checks, parquet export
    and publish (manifest with checksums). ``prepare`` is the path for real annotations.
    Returns the dataset URI (``store_uri`` or ``base/published``; its latest.json names
    ``version``) and the split counts.
    """
    from grounding_ops.data.images import ImageResolver
    from grounding_ops.data.manifest import publish_version
    from grounding_ops.data.prepare import SPLIT_FILES, VALID, PrepareSettings, valid_row, write_parquet
    from grounding_ops.data.readers import read_records
    from grounding_ops.storage import open_store
    from grounding_ops.tiny_models import MAX_PIXELS, MIN_PIXELS

    base = Path(base)
    data = generate_synthetic(base / "syn", n_images=n_images, seed=seed, min_size=min_size, max_size=max_size)
    settings = PrepareSettings(protocol=protocol, val_fraction=val_fraction, test_fraction=test_fraction,
                               min_pixels=MIN_PIXELS,
                               max_pixels=MAX_PIXELS)
    resolver = ImageResolver(data.images_root)
    work, export = base / "work", base / "export"
    work.mkdir(parents=True)
    export.mkdir(parents=True)
    with open(work / VALID, "w") as handle:
        for record in read_records(data.annotations):
            check = resolver.check(record.image, settings.max_image_pixels)
            if not check.ok:
                raise ValueError(f"synthetic image {record.image} failed its check: {check.detail}")
            handle.write(json.dumps(valid_row(record, record.boxes, check)) + "\n")
    counts = write_parquet(work, export, settings, resolver)
    (work / "quarantine.jsonl").write_text("")
    manifest = {"version": version, "counts": counts, "accepted": True, "protocol": settings.protocol,
                "settings": settings.to_json()}
    files = {name: export / name for name in SPLIT_FILES.values()}
    files["quarantine.jsonl"] = work / "quarantine.jsonl"
    uri = store_uri or str(base / "published")
    publish_version(open_store(uri, s3_client=s3_client), version, files, manifest, update_latest=True)
    return uri, counts
