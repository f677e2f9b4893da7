"""The image size a Qwen2-VL / Qwen2.5-VL model actually sees.

``smart_resize`` is the resize rule of ``qwen_vl_utils.fetch_image`` (which VeRL's
``RLHFDataset`` calls) and of the Qwen2-VL image processor: both sides rounded to a
multiple of ``factor`` (patch size 14 x spatial merge 2 = 28), the pixel count kept
within ``[min_pixels, max_pixels]``. Qwen2.5-VL answers in pixels of this resized
image, so the dataset records it next to the original size.
"""

from __future__ import annotations

import math

FACTOR = 28
DEFAULT_MIN_PIXELS = 4 * 28 * 28  # 3136, qwen_vl_utils' IMAGE_MIN_TOKEN_NUM * 28 * 28
DEFAULT_MAX_PIXELS = 1280 * 28 * 28  # 1003520
MAX_ASPECT_RATIO = 200


def _round(number: float, factor: int) -> int:
    return round(number / factor) * factor


def _ceil(number: float, factor: int) -> int:
    return math.ceil(number / factor) * factor


def _floor(number: float, factor: int) -> int:
    return math.floor(number / factor) * factor


def smart_resize(width: int, height: int, *, factor: int = FACTOR, min_pixels: int = DEFAULT_MIN_PIXELS,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
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
