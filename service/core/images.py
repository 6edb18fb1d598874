"""Images in and out: Pillow decoding to model-sized arrays, PNG encoding of arrays and grids, heatmaps.

Training's image-folder loader uses the same conversion, so an uploaded PNG is preprocessed exactly as
the training images were.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.core.errors import InvalidInput, LimitExceeded

if TYPE_CHECKING:  # the manifest's image spec, for the annotations only
    from service.core.artifact import ImageSpec

# Pillow's modes that hold one channel; anything else is converted to RGB when 3 channels are wanted.
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F", "P"}
# The decompression-bomb limit of a model that resizes its inputs: this many times its own input size, but
# never below MIN_MAX_PIXELS (an ordinary photo for a small model). Decoding one image at the limit costs
# at most 4 bytes a pixel: 67 MB at 4096 x 4096.
MAX_PIXELS_PER_INPUT_PIXEL = 256
MIN_MAX_PIXELS = 4096 * 4096


def image_to_array(image: Image.Image, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """A Pillow image -> (C, H, W) float32 pixel values in 0..255, resized to size (H, W) if given."""
    image = image.convert("L" if channels == 1 else "RGB")
    if size is not None and (image.height, image.width) != size:
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.float32)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def open_image(data: bytes, name: str, check_size: Callable[[Image.Image], None] | None = None) -> Image.Image:
    """Decode PNG or JPEG bytes fully (so a truncated file fails here, not later). `check_size(image)` runs
    on the header alone (Image.open is lazy), before any pixel is decoded, and raises to refuse the image."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # Pillow's own limit, beyond 2 x Image.MAX_IMAGE_PIXELS
        raise LimitExceeded(f"{name}: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidInput(f"{name}: cannot be decoded as a PNG or JPEG image ({exc})") from None
    if image.format not in ("PNG", "JPEG"):
        raise InvalidInput(f"{name}: is a {image.format} image; expected PNG or JPEG")
    if check_size is not None:
        check_size(image)
    try:
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidInput(f"{name}: cannot be decoded as a PNG or JPEG image ({exc})") from None
    return image


def max_pixels(spec: ImageSpec) -> int:
    """The largest upload, in pixels, a model takes: its own size when it does not resize, else the bomb limit."""
    own = spec.height * spec.width
    return max(MAX_PIXELS_PER_INPUT_PIXEL * own, MIN_MAX_PIXELS) if spec.resize else own


def decode_upload(data: bytes, name: str, spec: ImageSpec) -> np.ndarray:
    """An uploaded image -> (C*H*W,) raw model units, converted as training did. spec: the manifest's ImageSpec.

    Its size is checked from the header before any pixel is decoded."""

    def check_size(image: Image.Image) -> None:
        if not spec.resize and (image.height, image.width) != (spec.height, spec.width):
            raise InvalidInput(
                f"{name}: is {image.width}x{image.height} pixels; the model takes {spec.width}x{spec.height} "
                "(width x height)"
            )
        if image.width * image.height > max_pixels(spec):
            raise LimitExceeded(
                f"{name}: is {image.width}x{image.height} = {image.width * image.height} pixels; this model takes "
                f"at most {max_pixels(spec)} ({MAX_PIXELS_PER_INPUT_PIXEL} times its {spec.width}x{spec.height} "
                f"input, and at least {MIN_MAX_PIXELS})"
            )

    image = open_image(data, name, check_size)
    pixels = image_to_array(image, spec.channels, (spec.height, spec.width))
    return (pixels.reshape(-1) * (spec.max_value / 255.0)).astype(np.float64)


def to_pixels(raw: np.ndarray, max_value: float) -> np.ndarray:
    """Raw units -> uint8 pixels."""
    return np.clip(np.rint(raw * (255.0 / max_value)), 0, 255).astype(np.uint8)


def grid_canvas(rows: int, cols: int, channels: int, height: int, width: int) -> np.ndarray:
    """An empty grid of rows x cols images, (C, rows*H, cols*W) uint8, for place() to fill chunk by chunk."""
    return np.zeros((channels, rows * height, cols * width), dtype=np.uint8)


def place(canvas: np.ndarray, first: int, images: np.ndarray, cols: int) -> None:
    """Write images (N, C, H, W) into the canvas at grid cells first, first + 1, ... (row by row, `cols` a row),
    through a view: no copy of the whole grid, one assignment per grid row touched."""
    channels, _, _ = canvas.shape
    height, width = images.shape[2:]
    cells = canvas.reshape(channels, -1, height, cols, width).transpose(1, 3, 0, 2, 4)  # (rows, cols, C, H, W)
    done = 0
    while done < len(images):
        row, col = divmod(first + done, cols)
        take = min(cols - col, len(images) - done)
        cells[row, col : col + take] = images[done : done + take]
        done += take


def png_size_bound(channels: int, height: int, width: int) -> int:
    """The most bytes a PNG of these pixels can take: the rows raw (a filter byte each), as zlib stores data it
    cannot compress (deflateBound: about 1/4096 more), in IDAT chunks (12 bytes per 64 KiB), and the headers."""
    raw = height * (1 + width * channels)
    return raw + raw // 1024 + 4096


def grid(images: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(rows*cols, C, H, W) -> one (C, rows*H, cols*W) array, row by row, no padding."""
    n, c, h, w = images.shape
    return images.reshape(rows, cols, c, h, w).transpose(2, 0, 3, 1, 4).reshape(c, rows * h, cols * w)


def png_bytes(chw: np.ndarray) -> bytes:
    """(C, H, W) uint8 with C = 1 or 3 -> PNG bytes."""
    image = Image.fromarray(chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# Anchors of a dark-to-bright heat ramp (black, purple, red, orange, yellow).
_RAMP = np.array([[0, 0, 0], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1], any shape -> RGB in 0..255 with a trailing axis of 3."""
    position = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    frac = (position - low)[..., None]
    colours: np.ndarray = _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac
    return colours


def heatmap_overlay(pixels: np.ndarray, scores: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Input pixels (C, H, W) uint8 and per-pixel scores (H, W) -> (3, H, W) uint8 overlay.

    Scores are scaled to [0, 1] by the image's own largest score, so the brightest pixel is the one
    that cost the most nats; the input shows through in grey.
    """
    grey = pixels.astype(np.float64).mean(axis=0)
    top = scores.max()
    heat = heat_colours(np.where(scores > 0, scores, 0.0) / top if top > 0 else np.zeros_like(scores))
    blend = (1 - alpha) * grey[..., None] + alpha * heat
    overlay: np.ndarray = np.clip(np.rint(blend), 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return overlay
