"""JSON answers with numpy arrays: their size bounded from their shapes alone, and their text written a slice
at a time. Knows nothing of HTTP.

orjson holds the GIL while it writes, so one call for a 64 MiB answer would hold up every other thread, the
event loop's included, for about a fifth of a second. json_parts gives the same bytes as one orjson call, in
pieces of SLICE_NUMBERS numbers (about a millisecond each), so other threads get their turns, and an answer
can be streamed in chunks (chunks()) without ever being whole in memory.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import orjson

# The longest float64 orjson writes, "-2.2250738585072014e-308" (24 characters), and the comma after it.
JSON_NUMBER_BYTES = 25
# Keys, scalars (seed, threshold, model name and version) and the brackets around the arrays.
JSON_OVERHEAD_BYTES = 1024
SLICE_NUMBERS = 1 << 16  # numbers per orjson call
CHUNK_BYTES = 1 << 20  # bytes per chunk of a streamed answer
NUMPY = orjson.OPT_SERIALIZE_NUMPY


@functools.lru_cache(maxsize=1024)  # every request asks, with the same few shapes; a lookup is a tenth of the sums
def json_bytes(*shapes: tuple[int, ...]) -> int:
    """The most bytes orjson writes for float64 arrays of these shapes, nested as their shapes, in one object:
    per number JSON_NUMBER_BYTES, per list its brackets and a comma, and the object's keys and scalars."""
    total = JSON_OVERHEAD_BYTES
    for shape in shapes:
        lists = sum(math.prod(shape[:k]) for k in range(len(shape)))
        total += JSON_NUMBER_BYTES * math.prod(shape) + 3 * lists
    return total


def write_json(value: Any) -> bytes:
    """orjson.dumps(value, option=OPT_SERIALIZE_NUMPY), byte for byte, written a slice of each array at a time.
    Arrays must be C-contiguous (as orjson requires)."""
    return b"".join(json_parts(value))


def chunks(parts: Iterable[bytes], size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Pieces joined into chunks of about `size` bytes: what a streamed answer sends at a time."""
    held: list[bytes] = []
    count = 0
    for part in parts:
        held.append(part)
        count += len(part)
        if count >= size:
            yield b"".join(held)
            held, count = [], 0
    if held:
        yield b"".join(held)


def json_parts(value: Any) -> Iterator[bytes]:
    """orjson's text of `value` in pieces; numpy arrays a slice at a time."""
    if isinstance(value, dict):
        yield b"{"
        for i, (key, item) in enumerate(value.items()):
            yield (b"," if i else b"") + orjson.dumps(key) + b":"
            yield from json_parts(item)
        yield b"}"
    elif isinstance(value, np.ndarray):
        yield from _array_parts(value)
    elif isinstance(value, list) and any(isinstance(item, (dict, list, np.ndarray)) for item in value):
        yield b"["
        for i, item in enumerate(value):
            if i:
                yield b","
            yield from json_parts(item)
        yield b"]"
    else:
        yield orjson.dumps(value, option=NUMPY)


def _array_parts(array: np.ndarray) -> Iterator[bytes]:
    """orjson's text of a C-contiguous array, in pieces of at most about SLICE_NUMBERS numbers."""
    if array.ndim == 0 or array.size <= SLICE_NUMBERS:
        yield orjson.dumps(array, option=NUMPY)
        return
    per_row = math.prod(array.shape[1:])
    rows = SLICE_NUMBERS // per_row
    yield b"["
    for start in range(0, len(array), max(rows, 1)):
        if start:
            yield b","
        if rows >= 1:  # several rows in one call: orjson's "[row,row]" without its brackets
            yield orjson.dumps(array[start : start + rows], option=NUMPY)[1:-1]
        else:  # one row is itself too large: its own pieces
            yield from _array_parts(array[start])
    yield b"]"
