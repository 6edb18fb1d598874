"""Images in and out: Pillow decoding to model-sized arrays, PNG encoding of arrays and grids, heatmaps.

Training's image-folder loader uses the same conversion, so an uploaded PNG is preprocessed exactly as
the training images were.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.errors import InvalidInput

# Pillow's modes that hold one channel; anything else is converted to RGB when 3 channels are wanted.
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F", "P"}


def image_to_array(image: Image.Image, channels: int, size: tuple[int, int] | None) -> np.ndarray:
    """A Pillow image -> (C, H, W) float32 pixel values in 0..255, resized to size (H, W) if given."""
    image = image.convert("L" if channels == 1 else "RGB")
    if size is not None and (image.height, image.width) != size:
        image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.float32)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def open_image(data: bytes, name: str) -> Image.Image:
    """Decode PNG or JPEG bytes fully (so a truncated file fails here, not later)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidInput(f"{name}: cannot be decoded as a PNG or JPEG image ({exc})") from None
    if image.format not in ("PNG", "JPEG"):
        raise InvalidInput(f"{name}: is a {image.format} image; expected PNG or JPEG")
    return image


def decode_upload(data: bytes, name: str, spec) -> np.ndarray:
    """An uploaded image -> (C*H*W,) raw model units, converted as training did. spec: the manifest's ImageSpec."""
    image = open_image(data, name)
    if not spec.resize and (image.height, image.width) != (spec.height, spec.width):
        raise InvalidInput(
            f"{name}: is {image.width}x{image.height} pixels; the model takes {spec.width}x{spec.height} (width x height)"
        )
    pixels = image_to_array(image, spec.channels, (spec.height, spec.width))
    return (pixels.reshape(-1) * (spec.max_value / 255.0)).astype(np.float64)


def to_pixels(raw: np.ndarray, max_value: float) -> np.ndarray:
    """Raw units -> uint8 pixels."""
    return np.clip(np.rint(raw * (255.0 / max_value)), 0, 255).astype(np.uint8)


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
    return _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac


def heatmap_overlay(pixels: np.ndarray, scores: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Input pixels (C, H, W) uint8 and per-pixel scores (H, W) -> (3, H, W) uint8 overlay.

    Scores are scaled to [0, 1] by the image's own largest score, so the brightest pixel is the one
    that cost the most nats; the input shows through in grey.
    """
    grey = pixels.astype(np.float64).mean(axis=0)
    top = scores.max()
    heat = heat_colours(np.where(scores > 0, scores, 0.0) / top if top > 0 else np.zeros_like(scores))
    blend = (1 - alpha) * grey[..., None] + alpha * heat
    return np.clip(np.rint(blend), 0, 255).astype(np.uint8).transpose(2, 0, 1)
