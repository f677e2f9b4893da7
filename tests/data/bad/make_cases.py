"""The malformed-input corpus: definitions, the committed text files, and binary images.

Every case is one dict in :data:`CASES` with what it expects. ``python tests/data/bad/make_cases.py``
rewrites the committed text files (``annotations/``) and ``index.json`` from these definitions
(a test checks they are in sync). Binary cases (broken images, decompression bombs) are never
committed: :func:`write_images` generates them into a temporary images root at test time.

Case kinds and their ``expect`` keys:

* ``annotation`` / ``image``: run through ``prepare``; ``received``/``valid``/``quarantined``/
  ``skipped`` counts, and for each quarantined row its ``reason`` (and a ``detail`` substring).
* ``params``: a ``grounding_train`` form value; ``refused`` (bool).
* ``reward``: a model response; ``score`` (the reward it must get) — the reward never raises.
* ``manifest``: a tampering of a published dataset version; ``error`` substring of the refusal.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
INDEX = HERE / "index.json"
ANNOTATIONS = "annotations"

# The one good image every annotation case points at (besides its bad row).
GOOD_IMAGE = "good.png"
GOOD_SIZE = (64, 48)
GOOD_BOX = [4.0, 4.0, 40.0, 30.0]


def _good(rid: str, **extra: Any) -> dict[str, Any]:
    return {"id": rid, "image": GOOD_IMAGE, "phrase": "the green square", "boxes": [GOOD_BOX], **extra}


def _jl(*rows: Any) -> str:
    """JSONL text; a str row is written verbatim (for broken JSON)."""
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def _q(reason: str, detail: str = "") -> dict[str, str]:
    return {"reason": reason, "detail": detail}


def _one_bad(reason: str, detail: str = "", *, received: int = 2) -> dict[str, Any]:
    return {"received": received, "valid": received - 1, "quarantined": 1, "quarantine": [_q(reason, detail)]}


def _jsonl_case(cid: str, bad: Any, reason: str, detail: str = "", what: str = "", cls: str = "") -> dict[str, Any]:
    return {
        "id": cid, "kind": "annotation", "format": "jsonl", "class": cls or "annotation (canonical JSONL)",
        "what": what, "file": f"{ANNOTATIONS}/{cid}.jsonl", "text": _jl(_good(f"{cid}-ok"), bad),
        "expect": _one_bad(reason, detail),
    }


def _bad(cid: str, **fields: Any) -> dict[str, Any]:
    row = {"id": f"{cid}-bad", "image": GOOD_IMAGE, "phrase": "the green square", "boxes": [GOOD_BOX]}
    row.update(fields)
    return {k: v for k, v in row.items() if v is not _DROP}


_DROP = object()

JSONL_CASES = [
    _jsonl_case("jsonl-bad-json", '{"id": "jsonl-bad-json-bad", "image": "good.png", "phrase": ',
                "parse_error", "invalid JSON", "truncated JSON object", "annotation: unparseable"),
    _jsonl_case("jsonl-not-object", "[1, 2, 3]", "parse_error", "expected a JSON object",
                "a JSON array instead of an object", "annotation: unparseable"),
    _jsonl_case("jsonl-missing-id", {k: v for k, v in _bad("x").items() if k != "id"}, "parse_error",
                "missing required field 'id'", "no id field", "annotation: missing field"),
    _jsonl_case("jsonl-missing-image", _bad("jsonl-missing-image", image=_DROP), "parse_error", "'image'",
                "no image field", "annotation: missing field"),
    _jsonl_case("jsonl-missing-phrase", _bad("jsonl-missing-phrase", phrase=_DROP), "phrase_not_null", "",
                "no phrase field", "annotation: missing field"),
    _jsonl_case("jsonl-id-bool", _bad("x", id=True), "parse_error", "'id' must be",
                "id is a boolean", "annotation: wrong type"),
    _jsonl_case("jsonl-boxes-string", _bad("jsonl-boxes-string", boxes="4,4,40,30"), "parse_error",
                "'boxes' must be a list", "boxes given as a string", "annotation: wrong type"),
    _jsonl_case("jsonl-width-string", _bad("jsonl-width-string", width="wide"), "parse_error",
                "'width' must be an integer", "width is not a number", "annotation: wrong type"),
    _jsonl_case("jsonl-phrase-number", _bad("jsonl-phrase-number", phrase=42), "parse_error",
                "'phrase' must be a string", "phrase is a number", "annotation: wrong type"),
    _jsonl_case("jsonl-coords-strings", _bad("jsonl-coords-strings", boxes=[["4", "4", "40", "30"]]),
                "boxes_four_finite_numbers", "four finite numbers", "coordinates are strings",
                "annotation: wrong type"),
    _jsonl_case("jsonl-coords-bool", _bad("jsonl-coords-bool", boxes=[[True, 4, 40, 30]]),
                "boxes_four_finite_numbers", "", "a coordinate is a boolean", "annotation: wrong type"),
    _jsonl_case("jsonl-empty-phrase", _bad("jsonl-empty-phrase", phrase=""), "phrase_length", "0 characters",
                "empty phrase", "annotation: bad phrase"),
    _jsonl_case("jsonl-blank-phrase", _bad("jsonl-blank-phrase", phrase="   \t "), "phrase_length", "",
                "whitespace-only phrase", "annotation: bad phrase"),
    _jsonl_case("jsonl-huge-phrase", _bad("jsonl-huge-phrase", phrase="the red circle " * 400),
                "phrase_length", "characters", "6000-character phrase", "annotation: bad phrase"),
    _jsonl_case("jsonl-no-boxes", _bad("jsonl-no-boxes", boxes=[]), "has_box", "no boxes", "empty box list",
                "annotation: bad box"),
    _jsonl_case("jsonl-nan-box", '{"id": "jsonl-nan-box-bad", "image": "good.png", "phrase": "p", '
                '"boxes": [[NaN, 4, 40, 30]]}', "boxes_four_finite_numbers", "four finite numbers",
                "NaN coordinate", "annotation: bad box"),
    _jsonl_case("jsonl-infinite-box", '{"id": "jsonl-infinite-box-bad", "image": "good.png", "phrase": "p", '
                '"boxes": [[4, 4, Infinity, 30]]}', "boxes_four_finite_numbers", "", "Infinity coordinate",
                "annotation: bad box"),
    _jsonl_case("jsonl-three-numbers", _bad("jsonl-three-numbers", boxes=[[4, 4, 40]]),
                "boxes_four_finite_numbers", "", "box with three numbers", "annotation: bad box"),
    _jsonl_case("jsonl-reversed-x", _bad("jsonl-reversed-x", boxes=[[40, 4, 4, 30]]), "box_x1_lt_x2", "x2 - x1",
                "x1 > x2", "annotation: bad box"),
    _jsonl_case("jsonl-reversed-y", _bad("jsonl-reversed-y", boxes=[[4, 30, 40, 4]]), "box_y1_lt_y2", "",
                "y1 > y2", "annotation: bad box"),
    _jsonl_case("jsonl-negative-x1", _bad("jsonl-negative-x1", boxes=[[-3, 4, 40, 30]]), "box_x1_nonnegative",
                "", "negative x1", "annotation: box outside the image"),
    _jsonl_case("jsonl-outside-width", _bad("jsonl-outside-width", boxes=[[4, 4, 100, 30]]),
                "box_x2_within_width", "64 wide", "x2 beyond the image width", "annotation: box outside the image"),
    _jsonl_case("jsonl-outside-height", _bad("jsonl-outside-height", boxes=[[4, 4, 40, 480]]),
                "box_y2_within_height", "", "y2 beyond the image height", "annotation: box outside the image"),
    _jsonl_case("jsonl-tiny-area", _bad("jsonl-tiny-area", boxes=[[4, 4, 4.5, 4.5]]), "box_positive_area", "",
                "box under one square pixel", "annotation: bad box"),
    _jsonl_case("jsonl-declared-size-mismatch", _bad("jsonl-declared-size-mismatch", width=640, height=48),
                "declared_width_matches_image", "declared width 640", "width does not match the image",
                "annotation: wrong image size"),
    _jsonl_case("jsonl-unknown-image", _bad("jsonl-unknown-image", image="missing/nowhere.png"), "image_exists",
                "no image", "image file does not exist", "annotation: unknown image"),
    _jsonl_case("jsonl-path-traversal", _bad("jsonl-path-traversal", image="../outside.png"), "image_inside_root",
                "'..'", "../ escapes the images root", "annotation: path escape"),
    _jsonl_case("jsonl-backslash-traversal", _bad("jsonl-backslash-traversal", image="sub\\..\\..\\outside.png"),
                "image_inside_root", "'..'", "Windows-style ..\\ escape", "annotation: path escape"),
    _jsonl_case("jsonl-absolute-path", _bad("jsonl-absolute-path", image="/etc/passwd"), "image_inside_root",
                "outside the images root", "absolute path outside the root", "annotation: path escape"),
    _jsonl_case("jsonl-symlink-escape", _bad("jsonl-symlink-escape", image="escape-link.png"),
                "image_inside_root", "outside the images root", "a symlink in the root pointing outside it",
                "annotation: path escape"),
    _jsonl_case("jsonl-other-bucket", _bad("jsonl-other-bucket", image="s3://someone-elses-bucket/x.png"),
                "image_inside_root", "allowed buckets", "s3 URI into another bucket", "annotation: path escape"),
    _jsonl_case("jsonl-other-scheme", _bad("jsonl-other-scheme", image="http://127.0.0.1:1/x.png"),
                "image_inside_root", "unsupported scheme", "http URL as image", "annotation: path escape"),
    {
        "id": "jsonl-duplicate-id", "kind": "annotation", "format": "jsonl", "class": "annotation: duplicate id",
        "what": "the same id twice (the first is kept)", "file": f"{ANNOTATIONS}/jsonl-duplicate-id.jsonl",
        "text": _jl(_good("jsonl-duplicate-id-ok"), _good("jsonl-duplicate-id-ok", phrase="another phrase")),
        "expect": _one_bad("unique_id", "appeared earlier"),
    },
    {
        "id": "jsonl-blank-lines-only", "kind": "annotation", "format": "jsonl", "class": "annotation: empty input",
        "what": "a file with only blank lines", "file": f"{ANNOTATIONS}/jsonl-blank-lines-only.jsonl",
        "text": "\n\n   \n", "expect": {"error": "no annotation rows"},
    },
]

OTHER_ANNOTATION_CASES = [
    {
        "id": "normalized-over-one", "kind": "annotation", "format": "normalized",
        "class": "annotation (normalized 0-1 boxes)", "what": "a normalized coordinate above 1",
        "file": f"{ANNOTATIONS}/normalized-over-one.jsonl",
        "text": _jl({**_good("normalized-over-one-ok"), "boxes": [[0.1, 0.1, 0.5, 0.5]]},
                    {**_good("normalized-over-one-bad"), "boxes": [[0.1, 0.1, 1.5, 0.5]]}),
        "expect": _one_bad("box_x2_within_width"),
    },
    {
        "id": "normalized-pixels", "kind": "annotation", "format": "normalized",
        "class": "annotation (normalized 0-1 boxes)", "what": "pixel boxes given to the normalized reader",
        "file": f"{ANNOTATIONS}/normalized-pixels.jsonl",
        "text": _jl({**_good("normalized-pixels-ok"), "boxes": [[0.1, 0.1, 0.5, 0.5]]},
                    {**_good("normalized-pixels-bad"), "boxes": [[4, 4, 40, 30]]}),
        "expect": _one_bad("box_x2_within_width"),
    },
]


def _coco(images: list[Any], annotations: list[Any], categories: list[Any] | None = None) -> str:
    return json.dumps({"images": images, "annotations": annotations,
                       "categories": categories if categories is not None else [{"id": 1, "name": "green square"}]})


_COCO_IMG = {"id": 1, "file_name": GOOD_IMAGE, "width": 64, "height": 48}
_COCO_OK = {"id": 10, "image_id": 1, "category_id": 1, "bbox": [4, 4, 36, 26], "caption": "the green square"}


def _coco_case(cid: str, text: str, expect: dict[str, Any], what: str, cls: str = "annotation (COCO)") -> dict[str, Any]:
    return {"id": cid, "kind": "annotation", "format": "coco", "class": cls, "what": what,
            "file": f"{ANNOTATIONS}/{cid}.json", "text": text, "expect": expect}


COCO_CASES = [
    _coco_case("coco-dangling-image-id",
               _coco([_COCO_IMG], [_COCO_OK, {**_COCO_OK, "id": 11, "image_id": 999}]),
               _one_bad("parse_error", "unknown image_id 999"), "annotation refers to an image id that is not listed"),
    _coco_case("coco-negative-wh",
               _coco([_COCO_IMG], [_COCO_OK, {**_COCO_OK, "id": 11, "bbox": [30, 4, -20, 10], "caption": "neg"}]),
               _one_bad("box_x1_lt_x2"), "bbox with negative width"),
    _coco_case("coco-bbox-strings",
               _coco([_COCO_IMG], [_COCO_OK, {**_COCO_OK, "id": 11, "bbox": ["a", 4, 20, 10], "caption": "str"}]),
               _one_bad("boxes_four_finite_numbers"), "bbox with a non-numeric value"),
    _coco_case("coco-unknown-category",
               _coco([_COCO_IMG], [_COCO_OK, {"id": 11, "image_id": 1, "category_id": 7, "bbox": [4, 4, 5, 5]}]),
               _one_bad("parse_error", "unknown category_id 7"), "no caption and a category that is not listed"),
    _coco_case("coco-image-without-file-name",
               _coco([_COCO_IMG, {"id": 2, "width": 64}], [_COCO_OK]),
               _one_bad("parse_error", "needs 'id' and 'file_name'"), "an images[] entry without file_name"),
    _coco_case("coco-not-json", '{"images": [', {"received": 1, "valid": 0, "quarantined": 1,
                                                  "quarantine": [_q("parse_error", "not valid JSON")]},
               "truncated COCO document", "annotation: unparseable"),
    _coco_case("coco-top-level-list", "[]", {"received": 1, "valid": 0, "quarantined": 1,
                                             "quarantine": [_q("parse_error", "top-level object")]},
               "a JSON list instead of the COCO object", "annotation: unparseable"),
]

_VINDR_HEADER = "image_id,class_name,x_min,y_min,x_max,y_max\n"
_VINDR_OK = "good,Nodule,4,4,40,30\n"


def _csv_case(cid: str, fmt: str, text: str, expect: dict[str, Any], what: str, cls: str) -> dict[str, Any]:
    return {"id": cid, "kind": "annotation", "format": fmt, "class": cls, "what": what,
            "file": f"{ANNOTATIONS}/{cid}.csv", "text": text, "expect": expect}


_MSCXR_HEADER = "image,phrase,x,y,w,h\n"
_MSCXR_OK = "good.png,the green square,4,4,36,26\n"

CSV_CASES = [
    _csv_case("vindr-non-numeric-coords", "vindr-csv", _VINDR_HEADER + _VINDR_OK + "good,Mass,4,abc,40,30\n",
              _one_bad("boxes_four_finite_numbers"), "x/y cell is not a number", "annotation (VinDr CSV)"),
    _csv_case("vindr-empty-coords", "vindr-csv", _VINDR_HEADER + _VINDR_OK + "good,Mass,,,,\n",
              _one_bad("boxes_four_finite_numbers"), "a finding row with empty coordinates",
              "annotation (VinDr CSV)"),
    _csv_case("vindr-missing-image-id", "vindr-csv", _VINDR_HEADER + _VINDR_OK + ",Mass,4,4,40,30\n",
              _one_bad("parse_error", "missing 'image_id'"), "row without image_id", "annotation (VinDr CSV)"),
    _csv_case("vindr-extra-cells", "vindr-csv", _VINDR_HEADER + _VINDR_OK + "good,Mass,4,4,40,30,99,98\n",
              _one_bad("parse_error", "more cells"), "row with more cells than the header",
              "annotation (VinDr CSV)"),
    _csv_case("vindr-reversed", "vindr-csv", _VINDR_HEADER + _VINDR_OK + "good,Mass,40,4,4,30\n",
              _one_bad("box_x1_lt_x2"), "x_min > x_max", "annotation (VinDr CSV)"),
    _csv_case("vindr-no-finding", "vindr-csv", _VINDR_HEADER + _VINDR_OK + "good,No finding,,,,\n",
              {"received": 1, "valid": 1, "quarantined": 0, "skipped": 1, "quarantine": []},
              "'No finding' row: skipped and counted, not an error", "annotation (VinDr CSV)"),
    _csv_case("mscxr-negative-w", "mscxr", _MSCXR_HEADER + _MSCXR_OK + "good.png,left lung,30,4,-10,20\n",
              _one_bad("box_x1_lt_x2"), "negative box width", "annotation (MS-CXR)"),
    _csv_case("mscxr-negative-h", "mscxr", _MSCXR_HEADER + _MSCXR_OK + "good.png,right lung,4,30,10,-20\n",
              _one_bad("box_y1_lt_y2"), "negative box height", "annotation (MS-CXR)"),
    _csv_case("mscxr-non-numeric", "mscxr", _MSCXR_HEADER + _MSCXR_OK + "good.png,heart,4,4,ten,20\n",
              _one_bad("boxes_four_finite_numbers"), "w is not a number", "annotation (MS-CXR)"),
    _csv_case("mscxr-missing-image", "mscxr", _MSCXR_HEADER + _MSCXR_OK + ",heart,4,4,10,20\n",
              _one_bad("parse_error", "missing image column"), "row without an image", "annotation (MS-CXR)"),
    _csv_case("mscxr-traversal", "mscxr", _MSCXR_HEADER + _MSCXR_OK + "../../etc/passwd,heart,4,4,10,20\n",
              _one_bad("image_inside_root", "'..'"), "image path escaping the root", "annotation: path escape"),
]


# --------------------------------------------------------------------------- images (generated)


def _png_bytes(mode: str = "RGB", size: tuple[int, int] = GOOD_SIZE, color: Any = (20, 180, 60)) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _noise_jpeg(mode: str = "RGB", size: tuple[int, int] = GOOD_SIZE) -> bytes:
    from PIL import Image

    image = Image.effect_noise(size, 64).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_declaring(width: int, height: int, *, real_rows: bool) -> bytes:
    """A 1-bit grayscale PNG whose header declares ``width`` x ``height``.

    ``real_rows``: the IDAT holds every (zero) row, a genuine compression bomb of a few kB
    that inflates to width*height/8 bytes; otherwise a single empty IDAT (header-only bomb).
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    if real_rows:
        compressor = zlib.compressobj(9)
        row = b"\x00" * (1 + (width + 7) // 8)
        chunks = [compressor.compress(row) for _ in range(height)]
        idat = b"".join(chunks) + compressor.flush()
    else:
        idat = zlib.compress(b"")
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


IMAGE_MAKERS: dict[str, Callable[[], bytes]] = {
    "zero-byte.png": lambda: b"",
    "truncated.png": lambda: _noise_png_truncated(),
    "truncated.jpg": lambda: _noise_jpeg(size=(128, 96))[:600],
    "bomb-header.png": lambda: _png_declaring(100_000, 100_000, real_rows=False),
    "bomb-zlib.png": lambda: _png_declaring(12_000, 12_000, real_rows=True),
    "text-as.png": lambda: b"this is not an image, it is a text file with a .png name\n",
    "jpeg-named.png": lambda: _noise_jpeg(),
    "cmyk.jpg": lambda: _noise_jpeg("CMYK"),
    "sixteen-bit.png": lambda: _png_bytes("I;16", color=40000),
    "rgba.png": lambda: _png_bytes("RGBA", color=(20, 180, 60, 128)),
    "grayscale.png": lambda: _png_bytes("L", color=128),
    "sliver.png": lambda: _png_bytes(size=(2, 600)),
}


def _noise_png_truncated() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.effect_noise((128, 96), 64).convert("RGB").save(buffer, format="PNG")
    data = buffer.getvalue()
    return data[: len(data) // 2]


def _image_case(cid: str, image: str, expect: dict[str, Any], what: str, boxes: Any = None) -> dict[str, Any]:
    bad = {"id": f"{cid}-bad", "image": image, "phrase": "the green square", "boxes": boxes or [[1, 1, 2, 2]]}
    return {"id": cid, "kind": "image", "format": "jsonl", "class": "image", "what": what, "image": image,
            "file": f"{ANNOTATIONS}/{cid}.jsonl", "text": _jl(_good(f"{cid}-ok"), bad), "expect": expect}


_ACCEPTED = {"received": 2, "valid": 2, "quarantined": 0, "quarantine": []}

IMAGE_CASES = [
    _image_case("image-zero-byte", "zero-byte.png", _one_bad("image_decodes", "not a decodable image"),
                "zero-byte file"),
    _image_case("image-truncated-png", "truncated.png", _one_bad("image_decodes", "does not decode"),
                "PNG cut in half"),
    _image_case("image-truncated-jpeg", "truncated.jpg", _one_bad("image_decodes", ""), "JPEG cut short"),
    _image_case("image-bomb-header", "bomb-header.png", _one_bad("image_within_pixel_limit", ""),
                "PNG header declaring 100000x100000 pixels"),
    _image_case("image-bomb-zlib", "bomb-zlib.png", _one_bad("image_within_pixel_limit", "over the limit"),
                "real zlib bomb: 12000x12000 in a few kB"),
    _image_case("image-text-named-png", "text-as.png", _one_bad("image_decodes", "not a decodable image"),
                "a text file with a .png extension"),
    _image_case("image-sliver", "sliver.png", _one_bad("image_aspect_ratio", "aspect ratio"),
                "2x600 image (aspect ratio over the Qwen-VL limit)"),
    _image_case("image-jpeg-named-png", "jpeg-named.png", _ACCEPTED,
                "JPEG bytes with a .png extension: decoded by content, accepted"),
    _image_case("image-cmyk-jpeg", "cmyk.jpg", _ACCEPTED, "CMYK JPEG: accepted, converts to RGB"),
    _image_case("image-16bit-png", "sixteen-bit.png", _ACCEPTED, "16-bit grayscale PNG: accepted"),
    _image_case("image-rgba-png", "rgba.png", _ACCEPTED, "RGBA PNG: accepted, converts to RGB"),
    _image_case("image-grayscale-png", "grayscale.png", _ACCEPTED, "8-bit grayscale PNG: accepted"),
]


def write_images(root: Path, *, outside: Path | None = None) -> Path:
    """Write the good image, every generated bad image and the escaping symlink into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / GOOD_IMAGE).write_bytes(_png_bytes())
    for name, make in IMAGE_MAKERS.items():
        (root / name).write_bytes(make())
    outside = outside or root.parent / "outside.png"
    outside.write_bytes(_png_bytes())
    link = root / "escape-link.png"
    if not link.is_symlink():
        link.symlink_to(outside)
    return root


# --------------------------------------------------------------------------- params, reward, manifests

PARAM_CASES = [
    {"param": "learning_rate", "value": 1.0, "what": "above the maximum"},
    {"param": "learning_rate", "value": -1e-6, "what": "negative"},
    {"param": "learning_rate", "value": "1e-6", "what": "number given as a string"},
    {"param": "rollout_n", "value": 1, "what": "GRPO group of one (below minimum 2)"},
    {"param": "rollout_n", "value": 2.5, "what": "fraction for an integer"},
    {"param": "total_steps", "value": 0, "what": "zero steps"},
    {"param": "nodes", "value": 10_000, "what": "above the maximum"},
    {"param": "lora_rank", "value": True, "what": "boolean for an integer"},
    {"param": "min_delta", "value": 2, "what": "above 1"},
    {"param": "force", "value": "yes", "what": "string for a boolean"},
    {"param": "preset", "value": "tiny-cpu; rm -rf /", "what": "shell injection after a valid preset"},
    {"param": "preset", "value": "--privileged", "what": "a flag as a preset"},
    {"param": "engine", "value": "cpu\n--privileged", "what": "newline smuggling a flag"},
    {"param": "dataset_version", "value": "$(curl 127.0.0.1:1)", "what": "command substitution"},
    {"param": "dataset_version", "value": "`id`", "what": "backticks"},
    {"param": "dataset_version", "value": "v1; rm -rf /", "what": "shell separator"},
    {"param": "dataset_version", "value": "v1\n--set model=/etc", "what": "newline with a flag"},
    {"param": "dataset_version", "value": "--output=s3://evil/x", "what": "flag-looking version"},
    {"param": "dataset_version", "value": "../../etc/passwd", "what": "path traversal"},
    {"param": "dataset_version", "value": "", "what": "empty"},
    {"param": "dataset_version", "value": "v" * 200, "what": "over the length limit"},
    {"param": "promotion_metric", "value": "acc_at_0_5 --min-delta 0", "what": "flag appended to an enum"},
    {"param": "learning_rate", "value": float("nan"), "what": "NaN (passes every bound check)"},
    {"param": "kl_coef", "value": float("nan"), "what": "NaN (passes every bound check)"},
    {"param": "min_delta", "value": float("nan"), "what": "NaN minimum improvement"},
    {"param": "confidence", "value": float("nan"), "what": "NaN confidence level"},
    {"param": "rollout_n", "value": float("nan"), "what": "NaN for an integer"},
    {"param": "learning_rate", "value": float("inf"), "what": "infinity"},
]

# Form values the form accepts because JSON has one number type, which reach the trainer normalized.
PARAM_NORMALIZED_CASES = [
    {"param": "rollout_n", "value": 2.0, "override": "rollout_n=2", "what": "integral float for an integer"},
    {"param": "total_steps", "value": 10.0, "override": "total_steps=10", "what": "integral float for an integer"},
]

REWARD_CASES: list[dict[str, Any]] = [
    {"id": "reward-empty", "response": "", "what": "empty response"},
    {"id": "reward-garbage", "response": "asdf qwer !!! ??? <<<>>>", "what": "garbage text"},
    {"id": "reward-nan", "response": '[{"bbox_2d": [NaN, NaN, NaN, NaN], "label": "x"}]', "what": "NaN coords"},
    {"id": "reward-infinity", "response": '[{"bbox_2d": [0, 0, Infinity, 1e309], "label": "x"}]',
     "what": "infinite coords"},
    {"id": "reward-huge-numbers", "response": '[{"bbox_2d": [1e300, -1e300, 1e308, 99999999999999999999]}]',
     "what": "huge numbers"},
    {"id": "reward-unicode", "response": "\u0664\u0662 \U0001F600 \u202e[1,2,3,4]\u202c \x00 \udcff".encode(
        "utf-8", "surrogatepass").decode("utf-8", "replace"), "what": "unicode digits, emoji, bidi, NUL"},
    {"id": "reward-wrong-types", "response": '[{"bbox_2d": "1,2,3,4"}, {"bbox_2d": [true, null, {}, []]}]',
     "what": "wrong JSON types"},
    {"id": "reward-one-megabyte", "generate": "one_megabyte", "what": "1 MB of box-like text"},
    {"id": "reward-nested-bomb", "generate": "nested_bomb", "what": "JSON nested 100000 deep"},
    {"id": "reward-many-boxes", "generate": "many_boxes", "what": "100000 boxes (box spam)"},
    {"id": "reward-not-a-string", "response": None, "what": "None instead of text"},
    {"id": "reward-bytes", "response": b"[1, 2, 3, 4]", "what": "bytes instead of text"},
]


def reward_response(case: dict[str, Any]) -> Any:
    gen = case.get("generate")
    if gen == "one_megabyte":
        return ('[{"bbox_2d": [10, 10, 20, 20], "label": "x"}, ' * 30_000)[: 1 << 20]
    if gen == "nested_bomb":
        return "[" * 100_000 + "1, 2, 3, 4" + "]" * 100_000
    if gen == "many_boxes":
        return json.dumps([{"bbox_2d": [4, 4, 40, 30]} for _ in range(100_000)])
    return case["response"]


MANIFEST_CASES = [
    {"id": "manifest-tampered-checksum", "tamper": "rewrite_train", "error": "does not match its manifest",
     "what": "train.parquet changed after publishing"},
    {"id": "manifest-missing-file", "tamper": "delete_val", "error": "cannot download",
     "what": "val.parquet deleted after publishing"},
    {"id": "manifest-unknown-version", "tamper": "unknown_version", "error": "no dataset at",
     "what": "a version id that was never published"},
    {"id": "manifest-missing", "tamper": "delete_manifest", "error": "incomplete",
     "what": "manifest.json deleted (half-published version)"},
    {"id": "manifest-not-json", "tamper": "garbage_manifest", "error": "missing or not JSON",
     "what": "manifest.json is not JSON"},
    {"id": "manifest-file-unlisted", "tamper": "drop_listing", "error": "lists no",
     "what": "the manifest no longer lists train.parquet"},
    {"id": "manifest-size-lie", "tamper": "wrong_size", "error": "does not match its manifest",
     "what": "the manifest's size for train.parquet was edited"},
    {"id": "manifest-rejected-version", "tamper": "rejected", "error": "rejected by validation",
     "what": "a version over the quarantine threshold"},
    {"id": "manifest-latest-dangling", "tamper": "dangling_latest", "error": "incomplete",
     "what": "latest.json points at a version without a manifest"},
]

# One hostile row must be quarantined, never abort the run; inputs over the size caps are
# refused row by row or file by file. ``settings`` (optional) are PrepareSettings fields.
_DEEP = "[" * 5000 + "]" * 5000
_HUGE_INT = "9" * 5000  # over Python's 4300-digit int conversion limit
HOSTILE_CASES = [
    _jsonl_case("hostile-deep-json", '{"id": "hostile-deep-json-bad", "image": "good.png", "phrase": "p", '
                f'"boxes": {_DEEP}}}', "parse_error", "nested too deeply", "JSON nested 5000 levels deep",
                "annotation: hostile"),
    _jsonl_case("hostile-nul-image", _bad("hostile-nul-image", image="good.png\x00../../etc/passwd"), "parse_error",
                "NUL character", "a NUL byte in the image path", "annotation: hostile"),
    _jsonl_case("hostile-huge-integer", '{"id": "hostile-huge-integer-bad", "image": "good.png", "phrase": "p", '
                f'"boxes": [[4, 4, {_HUGE_INT}, 30]]}}', "boxes_four_finite_numbers", "four finite numbers",
                "a coordinate of 5000 digits", "annotation: hostile"),
    _jsonl_case("hostile-huge-integer-id", f'{{"id": {_HUGE_INT}, "image": "good.png", "phrase": "p", '
                '"boxes": [[4, 4, 40, 30]]}', "parse_error", "'id' must be", "an id of 5000 digits",
                "annotation: hostile"),
    _jsonl_case("hostile-html-id", _bad("<script>alert(1)</script>", boxes=[[40, 4, 4, 30]]), "box_x1_lt_x2", "",
                "an id that is HTML (the validation pages must escape it)", "annotation: hostile"),
    {**_jsonl_case("hostile-long-line", _bad("hostile-long-line", phrase="x" * 3000), "parse_error",
                   "line size cap", "a line over the line size cap (1 KiB here)", "annotation: size cap"),
     "settings": {"max_line_bytes": 1024}},
    {**_coco_case("hostile-coco-over-cap", _coco([_COCO_IMG], [_COCO_OK] * 40),
                  {"received": 1, "valid": 0, "quarantined": 1, "quarantine": [_q("parse_error", "document size cap")]},
                  "a COCO document over the document size cap (1 KiB here)", "annotation: size cap"),
     "settings": {"max_document_bytes": 1024}},
    _coco_case("hostile-coco-deep", '{"images": [], "annotations": ' + _DEEP + "}",
               {"received": 1, "valid": 0, "quarantined": 1, "quarantine": [_q("parse_error", "nested too deeply")]},
               "a COCO document nested 5000 levels deep", "annotation: hostile"),
    {**_csv_case("hostile-csv-huge-cell", "vindr-csv", _VINDR_HEADER + _VINDR_OK + "good,Mass," + "4" * 3000
                 + ",4,40,30\n", _one_bad("parse_error", "unreadable CSV row"), "a CSV cell over the line size cap",
                 "annotation: size cap"),
     "settings": {"max_line_bytes": 1024}},
    {**_jsonl_case("hostile-image-over-cap", _bad("hostile-image-over-cap"), "image_within_pixel_limit",
                   "over the cap", "image files over the image byte cap (100 bytes here)", "annotation: size cap"),
     "expect": {"received": 2, "valid": 0, "quarantined": 2,
                "quarantine": [_q("image_within_pixel_limit", "over the cap")] * 2},
     "settings": {"max_image_bytes": 100}},
]

ANNOTATION_CASES = JSONL_CASES + OTHER_ANNOTATION_CASES + COCO_CASES + CSV_CASES + IMAGE_CASES + HOSTILE_CASES


# The grounding_data form: locations outside the input roots and undeclared keys (trust boundaries).
DATA_FORM_CASES: list[dict[str, Any]] = [
    {"id": "data-form-proc-environ", "what": "the task's environment as the annotations, '/' as the images root",
     "conf": {"input_uri": "/proc/self/environ", "format": "jsonl", "images_root": "/"}, "error": "input roots"},
    {"id": "data-form-etc-passwd", "what": "/etc/passwd as the annotations",
     "conf": {"input_uri": "/etc/passwd", "format": "jsonl", "images_root": "/etc"}, "error": "input roots"},
    {"id": "data-form-other-bucket", "what": "another bucket, read with the platform's credentials",
     "conf": {"input_uri": "s3://other-bucket/private/a.jsonl", "images_root": "s3://other-bucket/private"},
     "error": "input roots"},
    {"id": "data-form-prefix-lookalike", "what": "a prefix that only starts like the input root",
     "conf": {"input_uri": "s3://grounding-ops/incoming-evil/a.jsonl", "images_root": "s3://grounding-ops/incoming-evil"},
     "error": "input roots"},
    {"id": "data-form-dotdot", "what": "'..' out of the input root",
     "conf": {"input_uri": "s3://grounding-ops/incoming/../datasets/x.jsonl", "images_root": "s3://grounding-ops/incoming"},
     "error": "not a plain"},
    {"id": "data-form-undeclared-key", "what": "an undeclared dataset_name key steering the publish prefix",
     "conf": {"input_uri": "s3://grounding-ops/incoming/a.jsonl", "dataset_name": "../../x"},
     "error": "does not declare"},
]


def index() -> dict[str, Any]:
    """The corpus index (what ``index.json`` holds)."""
    def strip(case: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in case.items() if k != "text"}

    def param_id(case: dict[str, Any]) -> str:
        return f"params-{case['param']}-{PARAM_CASES.index(case)}"

    reward = [{k: v for k, v in c.items() if k != "response"} | {"kind": "reward", "class": "model response",
                                                                 "expect": {"never_raises": True, "score": 0.0}}
              for c in REWARD_CASES]
    return {
        "cases": [strip(c) for c in ANNOTATION_CASES]
        + [{"id": param_id(c), "kind": "params", "class": "Params (grounding_train form)", "what": c["what"],
            "param": c["param"], "value": c["value"], "expect": {"refused": True}} for c in PARAM_CASES]
        + [{"id": f"params-{c['param']}-normalized-{PARAM_NORMALIZED_CASES.index(c)}", "kind": "params-normalized",
            "class": "Params accepted as JSON numbers (grounding_train form)", "what": c["what"], "param": c["param"], "value": c["value"],
            "expect": {"override": c["override"]}} for c in PARAM_NORMALIZED_CASES]
        + reward
        + [{"id": c["id"], "kind": "manifest", "class": "dataset manifest", "what": c["what"],
            "tamper": c["tamper"], "expect": {"error": c["error"]}} for c in MANIFEST_CASES]
        + [{"id": c["id"], "kind": "data-form", "class": "Params (grounding_data form)", "what": c["what"],
            "conf": c["conf"], "expect": {"error": c["error"]}} for c in DATA_FORM_CASES],
    }


def write_corpus(root: Path = HERE) -> list[Path]:
    """Write the committed text files and ``index.json``; return what was written."""
    written = []
    for case in ANNOTATION_CASES:
        path = root / case["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(case["text"], encoding="utf-8")
        written.append(path)
    (root / "index.json").write_text(json.dumps(index(), indent=2, sort_keys=True, default=repr) + "\n")
    written.append(root / "index.json")
    return written


if __name__ == "__main__":
    paths = write_corpus(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
    print(f"wrote {len(paths)} files")
