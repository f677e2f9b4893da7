"""The image size a Qwen2-VL / Qwen2.5-VL / Qwen3-VL model actually sees.

``smart_resize`` is the resize rule of ``qwen_vl_utils.fetch_image`` (which VeRL's
``RLHFDataset`` calls) and of the Qwen-VL image processors: both sides rounded to a
multiple of ``factor`` (patch size x spatial merge 2: 28 for Qwen2-VL and Qwen2.5-VL,
whose patches are 14 pixels, 32 for Qwen3-VL, whose patches are 16), the pixel count
kept within ``[min_pixels, max_pixels]``. Qwen2.5-VL answers in pixels of this resized
image, so the dataset records it next to the original size, and the export stores the
image already resized (the rule maps such an image onto itself).
"""

from __future__ import annotations

import math

FACTOR = 28
# Resize factor (patch size x spatial merge) per model family.
RESIZE_FACTORS: dict[str, int] = {"qwen2.5-vl": 28, "qwen2-vl": 28, "qwen3-vl": 32}
DEFAULT_FAMILY = "qwen2.5-vl"
# The coordinate frame each family was pretrained to answer in. The protocols named after a family
# use that family's frame; a pretrained model is only asked for its own family's frame (generic
# protocols such as click-xywh teach a new format and are allowed with any family).
NATIVE_FRAME: dict[str, str] = {"qwen2.5-vl": "resized", "qwen2-vl": "grid1000", "qwen3-vl": "grid1000"}
_FRAME_WORDS = {"resized": "pixels of the resized image", "grid1000": "a 0-1000 grid"}
DEFAULT_MIN_PIXELS = 4 * 28 * 28  # 3136, qwen_vl_utils' IMAGE_MIN_TOKEN_NUM * 28 * 28
DEFAULT_MAX_PIXELS = 1280 * 28 * 28  # 1003520
MAX_ASPECT_RATIO = 200


def resize_factor(family: str) -> int:
    """The resize factor of a model family; ValueError naming the known families otherwise."""
    try:
        return RESIZE_FACTORS[family]
    except KeyError:
        raise ValueError(f"model family {family!r} is unknown: use one of {', '.join(RESIZE_FACTORS)}") from None


def family_for_protocol(protocol: str) -> str:
    """The model family a protocol is named after (its resize factor), else :data:`DEFAULT_FAMILY`."""
    return protocol if protocol in NATIVE_FRAME else DEFAULT_FAMILY


def family_protocol_problem(family: str, protocol: str) -> str | None:
    """Why ``protocol`` does not suit a pretrained ``family`` model (None when it does)."""
    if family not in NATIVE_FRAME or protocol not in NATIVE_FRAME:
        return None
    native, asked = NATIVE_FRAME[family], NATIVE_FRAME[protocol]
    if native == asked:
        return None
    return (
        f"model family {family} answers in {_FRAME_WORDS[native]} but protocol {protocol} asks for "
        f"{_FRAME_WORDS[asked]}: use protocol {family} (or a generic one: click-xywh, normalized-xyxy)"
    )


def _round(number: float, factor: int) -> int:
    return round(number / factor) * factor


def _ceil(number: float, factor: int) -> int:
    return math.ceil(number / factor) * factor


def _floor(number: float, factor: int) -> int:
    return math.floor(number / factor) * factor


def smart_resize(
    width: int,
    height: int,
    *,
    factor: int = FACTOR,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """``(resized_width, resized_height)`` for an image of ``width`` x ``height``."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if max_pixels < min_pixels:
        raise ValueError(f"max_pixels ({max_pixels}) must be >= min_pixels ({min_pixels})")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.1f} is over {MAX_ASPECT_RATIO}")
    h_bar = max(factor, _round(height, factor))
    w_bar = max(factor, _round(width, factor))
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = _floor(height / beta, factor)
        w_bar = _floor(width / beta, factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = _ceil(height * beta, factor)
        w_bar = _ceil(width * beta, factor)
    return w_bar, h_bar
