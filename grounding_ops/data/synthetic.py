"""A small synthetic grounding dataset with real images, for the demo, tests and benchmarks.

Each image is a colour-ramp background (a position code, see :data:`RAMP`) with a few
translucent coloured shapes drawn by Pillow; each shape gives a record with its pixel box
and a phrase that names it alone, by colour and kind ("the red circle"), colour or kind
("the red shape", "the circle") or position ("the leftmost shape"). Output: an images
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
BACKGROUND = (128, 128, 128)
# A colour ramp across the background (red rises left to right, green top to bottom), seen through
# translucent shapes: a position code in the pixels. The tiny models' vision tower has no absolute
# position embedding and their language model's rotary position frequencies hardly tell image
# columns apart, so without it a tiny model can name a shape's colour but not say where it is.
# Mid-grey plus at most RAMP keeps every channel inside 0..255: a clipped ramp codes no position.
RAMP = 120
SHAPE_OPACITY = 0.6
# Sides of the shapes, as shares of the shorter image side.
SIDE_SHARES = (0.3, 0.45)


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


def render_image(
    rng: random.Random, width: int, height: int, n_shapes: int
) -> tuple[Any, list[tuple[str, str, list[int]]]]:
    """One image (the :data:`RAMP` background) and its shapes as ``(color, shape, [x1, y1, x2, y2])``.

    No two shapes of one image share both colour and kind, and shapes do not overlap, so every
    shape can be named by a phrase that fits it alone (see :func:`phrase_candidates`).
    """
    import numpy as np
    from PIL import Image, ImageDraw

    xs = np.linspace(-1.0, 1.0, width)[None, :, None] * np.array([1.0, 0.0, 0.0])
    ys = np.linspace(-1.0, 1.0, height)[:, None, None] * np.array([0.0, 1.0, 0.0])
    pixels = np.asarray(BACKGROUND, dtype=float) + RAMP * (xs + ys)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype("uint8"), "RGB")
    kinds = rng.sample([(color, shape) for color in sorted(COLORS) for shape in SHAPES], n_shapes)
    placed: list[tuple[int, int, int, int]] = []
    shapes: list[tuple[str, str, list[int]]] = []
    short = min(width, height)
    for color, shape in kinds:
        for _attempt in range(20):
            side = rng.randint(max(8, int(short * SIDE_SHARES[0])), max(9, int(short * SIDE_SHARES[1])))
            x1, y1 = rng.randint(0, width - side), rng.randint(0, height - side)
            box = (x1, y1, x1 + side, y1 + side)
            if not _overlaps(box, placed):
                break
        else:
            continue
        layer, mask = Image.new("RGB", (width, height)), Image.new("L", (width, height), 0)
        _draw_shape(ImageDraw.Draw(layer), shape, COLORS[color], box)
        _draw_shape(ImageDraw.Draw(mask), shape, round(255 * SHAPE_OPACITY), box)
        image.paste(layer, (0, 0), mask)
        placed.append(box)
        shapes.append((color, shape, list(box)))
    return image, shapes


# A shape is "leftmost" (etc.) when its centre is this share of the image beyond every other one.
POSITION_MARGIN = 0.15


def phrase_candidates(shapes: list[tuple[str, str, list[int]]], index: int, width: int, height: int) -> list[str]:
    """Every phrase that names shape ``index`` of ``shapes`` and no other one.

    Three kinds: colour and kind ("the red circle", always unique), colour or kind alone
    ("the red shape", "the circle") when no other shape shares it, and position words
    ("the leftmost shape", "the top shape") when the shape is clearly the furthest that way.
    """
    color, shape, box = shapes[index]
    others = [s for i, s in enumerate(shapes) if i != index]
    out = [f"the {color} {shape}"]
    if all(o[0] != color for o in others):
        out.append(f"the {color} shape")
    if all(o[1] != shape for o in others):
        out.append(f"the {shape}")
    if others:
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        centres = [((o[2][0] + o[2][2]) / 2, (o[2][1] + o[2][3]) / 2) for o in others]
        dx, dy = POSITION_MARGIN * width, POSITION_MARGIN * height
        for word, beyond in (
            ("leftmost", all(cx + dx < ox for ox, _ in centres)),
            ("rightmost", all(cx - dx > ox for ox, _ in centres)),
            ("top", all(cy + dy < oy for _, oy in centres)),
            ("bottom", all(cy - dy > oy for _, oy in centres)),
        ):
            if beyond:
                out.append(f"the {word} shape")
    return out


def generate_synthetic(
    out_dir: str | Path,
    *,
    n_images: int = 24,
    seed: int = 0,
    min_size: int = 112,
    max_size: int = 112,
    max_shapes: int = 2,
    n_invalid: int = 0,
    patients: int | None = None,
) -> SyntheticDataset:
    """Write ``out_dir/images/*.png`` and ``out_dir/annotations.jsonl``.

    Each image holds 1 to ``max_shapes`` shapes (sides 0.3 to 0.45 of the
    shorter image side) and gives one record per shape, its phrase picked at random among
    those that name it alone (colour and kind, colour, kind or position words; see
    :func:`phrase_candidates`). The default 112-pixel images are what the tiny models see
    without resizing (4x4 visual tokens).

    ``n_invalid`` adds that many deliberately broken rows (box outside the image, missing
    image, empty phrase, ...) to show the quarantine. ``patients`` groups images into that
    many groups (default: two images per group) to exercise the group split.
    """
    if not 1 <= max_shapes <= len(COLORS) * len(SHAPES):
        raise ValueError(f"max_shapes must be between 1 and {len(COLORS) * len(SHAPES)}, got {max_shapes}")
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
            for k, (_color, _shape, box) in enumerate(shapes):
                record = {
                    "id": f"syn-{index:05d}-{k}",
                    "image": f"images/{name}",
                    "phrase": rng.choice(phrase_candidates(shapes, k, width, height)),
                    "boxes": [box],
                    "width": width,
                    "height": height,
                    "source": SOURCE,
                    "group": f"patient-{index % n_groups:04d}",
                }
                handle.write(json.dumps(record) + "\n")
                records += 1
        broken = [
            {
                "id": "bad-outside",
                "image": "images/img_00000.png",
                "phrase": "the box outside",
                "boxes": [[0, 0, 10_000, 10]],
            },
            {
                "id": "bad-missing",
                "image": "images/does_not_exist.png",
                "phrase": "a missing image",
                "boxes": [[0, 0, 5, 5]],
            },
            {"id": "bad-phrase", "image": "images/img_00000.png", "phrase": "", "boxes": [[0, 0, 5, 5]]},
            {"id": "bad-order", "image": "images/img_00000.png", "phrase": "x2 before x1", "boxes": [[20, 0, 5, 5]]},
            {"id": "bad-escape", "image": "../outside.png", "phrase": "path traversal", "boxes": [[0, 0, 5, 5]]},
        ]
        for i in range(n_invalid):
            row = dict(broken[i % len(broken)], source=SOURCE)
            row["id"] = f"{row['id']}-{i}"
            handle.write(json.dumps(row) + "\n")
    return SyntheticDataset(images_dir.parent, annotations, n_images, records + n_invalid, n_invalid)


def publish_synthetic_version(
    base: str | Path,
    *,
    version: str,
    n_images: int,
    seed: int,
    val_fraction: float,
    test_fraction: float = 0.0,
    min_size: int = 112,
    max_size: int = 112,
    protocol: str = "qwen2.5-vl",
    store_uri: str | None = None,
    s3_client: Any | None = None,
) -> tuple[str, dict[str, int]]:
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
    settings = PrepareSettings(
        protocol=protocol,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
    )
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
    manifest = {
        "version": version,
        "counts": counts,
        "accepted": True,
        "protocol": settings.protocol,
        "settings": settings.to_json(),
    }
    files = {name: export / name for name in SPLIT_FILES.values()}
    files["quarantine.jsonl"] = work / "quarantine.jsonl"
    uri = store_uri or str(base / "published")
    publish_version(open_store(uri, s3_client=s3_client), version, files, manifest, update_latest=True)
    return uri, counts
