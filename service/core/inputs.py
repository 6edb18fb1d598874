"""Turning JSON values into validated arrays, with errors that say what was expected and what arrived.

Validation is vectorised: numpy converts the whole batch at once, and only on failure do we walk
the request to name the offending instance. The walk is a loop, not a recursion, and stops at the depth
the field may have, so no nesting, however deep, gets further than a 422 that names where it went wrong.
"""

from __future__ import annotations

import functools
import io
import math
import reprlib
from typing import Any

import numpy as np

from service.core.errors import InvalidInput, LimitExceeded, MalformedRequest

FLOAT32_MAX = float(np.finfo(np.float32).max)
# numpy iterates over at most this many dimensions (`.flat` raises RuntimeError beyond it).
MAX_DEPTH = 32
# Room for a .npy header: its magic and length, and at most numpy's max_header_size (10,000) of text.
NPY_HEADER_BYTES = 16 * 1024


def _describe(value: Any) -> str:
    try:
        text = repr(value)
    except RecursionError:  # a list nested hundreds deep: reprlib stops at a few levels
        text = reprlib.repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _first_non_number(value: Any, path: str, max_depth: int) -> tuple[str, Any] | None:
    """Depth-first search for the first leaf that is not an int or float (bool is not a number here), where
    a list nested deeper than max_depth counts as such a leaf. A loop with its own stack: any depth is safe."""
    stack = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, list) and depth < max_depth:
            stack.extend((child, f"{where}[{i}]", depth + 1) for i, child in reversed(list(enumerate(item))))
        elif isinstance(item, bool) or not isinstance(item, (int, float)):
            return where, item
    return None


def _shape_of(value: Any) -> list[int] | None:
    """The nested-list shape of one value, or None when it is ragged."""
    try:
        return list(np.shape(np.asarray(value, dtype=np.float64)))
    except (ValueError, TypeError):
        return None


def as_float_array(value: Any, field: str, max_depth: int = MAX_DEPTH) -> np.ndarray:
    """A nested list of numbers, at most max_depth lists deep, as a float64 array; InvalidInput naming the
    first problem otherwise."""
    if not isinstance(value, list) or not value:
        raise InvalidInput(f"{field}: expected a non-empty list, got {_describe(value)}")
    max_depth = min(max_depth, MAX_DEPTH)
    try:
        # One C pass builds the array; a C-level map over its leaves gives their types. Only when a leaf is
        # not an int or a float (a string, a bool, a null, or a list because the batch is ragged or nested
        # too deep) does the slow walk run, to name the culprit.
        leaves = np.asarray(value, dtype=object)
        kinds = set(map(type, leaves.flat)) if leaves.ndim <= max_depth else {list}
    except ValueError:
        kinds = {list}
    if not kinds <= {int, float}:
        found = _first_non_number(value, field, max_depth)
        if found:
            where, bad = found
            raise InvalidInput(f"{where}: expected a number, got {type(bad).__name__} {_describe(bad)}")
        shapes = [_shape_of(item) for item in value]
        first = next((i for i, s in enumerate(shapes) if s != shapes[0] or s is None), 0)
        raise InvalidInput(
            f"{field}: every item must have the same shape; {field}[0] has shape {shapes[0]} "
            f"but {field}[{first}] has shape {shapes[first] or 'ragged'}"
        )
    try:
        array = leaves.astype(np.float64)
    except OverflowError:
        raise InvalidInput(f"{field}: a number is too large for a 64-bit float") from None
    _check_finite(array, field)
    return array


def _check_finite(array: np.ndarray, field: str) -> None:
    """InvalidInput naming the first value of a float64 batch that is NaN or infinite."""
    # A sum is finite only if every value is (NaN and infinities carry through it), so one C reduction clears the
    # common case; a finite batch whose sum overflows takes the exact check.
    if not math.isfinite(np.add.reduce(array, axis=None)) and not np.all(np.isfinite(array)):
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        raise InvalidInput(f"{field}{''.join(f'[{i}]' for i in index)}: expected a finite number, got {array[index]}")


def parse_instances(value: Any, input_shape: list[int], max_instances: int) -> np.ndarray:
    """instances -> (B, D) float64 in raw units. Each instance is D numbers or nested lists shaped input_shape."""
    if isinstance(value, list) and len(value) > max_instances:
        raise LimitExceeded(
            f"instances: {len(value)} instances exceed the limit of {max_instances} per request (VAE_MAX_INSTANCES)"
        )
    return _shaped(as_float_array(value, "instances"), input_shape)


def check_array(array: np.ndarray, input_shape: list[int], max_instances: int) -> np.ndarray:
    """A binary (.npy) batch -> (B, D) float64, with the same checks as JSON instances, its dtype and shape
    checked before any conversion (a batch of the wrong shape costs no copy)."""
    check_batch_header(array.dtype, array.shape, input_shape, max_instances)
    array = array.astype(np.float64)
    _check_finite(array, "instances")
    return array.reshape(len(array), math.prod(input_shape))


def check_batch_header(dtype: np.dtype, shape: tuple[int, ...], input_shape: list[int], max_instances: int) -> None:
    """The checks of a binary batch that need only its dtype and shape: run before its data is touched."""
    if dtype.kind not in "iuf":
        raise InvalidInput(f"instances: expected a numeric array, got dtype {dtype}")
    if len(shape) < 2 or shape[0] == 0:
        raise InvalidInput(f"instances: expected a non-empty batch shaped (B, ...), got shape {list(shape)}")
    if shape[0] > max_instances:
        raise LimitExceeded(
            f"instances: {shape[0]} instances exceed the limit of {max_instances} per request (VAE_MAX_INSTANCES)"
        )
    _check_instance_shape(list(shape[1:]), input_shape)


def _check_instance_shape(got: list[int] | str, input_shape: list[int]) -> None:
    n_features = math.prod(input_shape)
    if got not in (input_shape, [n_features]):
        raise InvalidInput(
            f"instances: each instance must be {n_features} numbers or nested lists shaped {input_shape}; "
            f"got instances shaped {got}"
        )


def _shaped(array: np.ndarray, input_shape: list[int]) -> np.ndarray:
    _check_instance_shape(list(array.shape[1:]) if array.ndim > 1 else "a single number", input_shape)
    return array.reshape(len(array), math.prod(input_shape))


def read_npy(data: bytes | memoryview, input_shape: list[int], max_instances: int) -> np.ndarray:
    """A .npy body -> (B, D) float64. Its header's dtype and shape are checked before the data is read, and the
    data is viewed in place, not copied, until it is converted once (a 60 MB body of the wrong shape costs
    nothing; one of the right shape holds at most max_instances rows)."""
    shape, fortran_order, dtype, offset = _npy_header_of(data)
    check_batch_header(dtype, shape, input_shape, max_instances)
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - offset != expected:
        raise MalformedRequest(
            f"the body is not a readable .npy array: its header promises {expected} bytes of data "
            f"({list(shape)} of {dtype}), the body holds {len(data) - offset}"
        )
    array = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset)
    return check_array(array.reshape(shape, order="F" if fortran_order else "C"), input_shape, max_instances)


def npy_float64_bytes(data: bytes | memoryview) -> int:
    """The bytes a .npy body's array takes as float64 (what read_npy makes of it), from its header alone; the
    body's own length when the header cannot be read (read_npy then says why)."""
    try:
        shape, _, _, _ = _npy_header_of(data)
    except (MalformedRequest, InvalidInput):
        return len(data)
    return math.prod(shape) * 8


def _npy_header_of(data: bytes | memoryview) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """_npy_header of a body's header bytes, nothing after them (so the cache's key)."""
    return _npy_header(bytes(data[: _npy_header_length(data)]))


def _npy_header_length(data: bytes | memoryview) -> int:
    """The bytes of a .npy body's header, magic included, as its version's length field gives them (at most
    NPY_HEADER_BYTES; when the body is not .npy, NPY_HEADER_BYTES, and _npy_header says what is wrong)."""
    head = bytes(data[:12])
    if len(head) == 12 and head[:6] == b"\x93NUMPY":
        if head[6] == 1:
            return min(10 + int.from_bytes(head[8:10], "little"), NPY_HEADER_BYTES)
        if head[6] == 2:
            return min(12 + int.from_bytes(head[8:12], "little"), NPY_HEADER_BYTES)
    return NPY_HEADER_BYTES


# Clients send the same few shapes again and again, and numpy parses a header with ast.literal_eval (about
# 50 µs), so parsed headers are kept. The key is the header's own bytes, nothing after it.
@functools.lru_cache(maxsize=256)
def _npy_header(head: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data offset) of a .npy header; MalformedRequest or InvalidInput if unusable."""
    stream = io.BytesIO(head)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(
                f".npy format version {version[0]}.{version[1]} is not supported; save with numpy's default"
            )
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise MalformedRequest(f"the body is not a readable .npy array: {exc}") from None
    if dtype.hasobject or dtype.fields is not None:
        raise InvalidInput(f"instances: expected a numeric array, got dtype {dtype}")
    return shape, fortran_order, dtype, stream.tell()


def parse_latents(value: Any, latent_dim: int, max_instances: int) -> np.ndarray:
    """z -> (B, d) float32."""
    if isinstance(value, list) and len(value) > max_instances:
        raise LimitExceeded(
            f"z: {len(value)} vectors exceed the limit of {max_instances} per request (VAE_MAX_INSTANCES)"
        )
    return check_latents(as_float_array(value, "z"), latent_dim, max_instances)


def check_latents(array: np.ndarray, latent_dim: int, max_instances: int) -> np.ndarray:
    """A batch of latent vectors (B, d), from JSON or binary data -> (B, d) float32. A value beyond float32
    is refused here by name: cast, it would become inf and be decoded into nulls."""
    if array.ndim != 2 or array.shape[1] != latent_dim:
        got = list(array.shape[1:]) if array.ndim > 1 else "a single number"
        raise InvalidInput(f"z: each latent vector must be {latent_dim} numbers; got vectors shaped {got}")
    if len(array) > max_instances:
        raise LimitExceeded(
            f"z: {len(array)} vectors exceed the limit of {max_instances} per request (VAE_MAX_INSTANCES)"
        )
    bad = ~np.isfinite(array) | (np.abs(array) > FLOAT32_MAX)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        value = float(array[row, col])
        if not math.isfinite(value):
            raise InvalidInput(f"z[{row}][{col}]: expected a finite number, got {value}")
        raise InvalidInput(
            f"z[{row}][{col}]: {value:g} is beyond float32, the model's precision (largest magnitude {FLOAT32_MAX:g})"
        )
    return array.astype(np.float32)


def json_value_bound(data: bytes) -> int:
    """At most how many values (numbers, strings, lists, objects, ...) a JSON text holds, counted without
    parsing it: every value but the first in a list or object follows a comma, and every list or object opens
    with a bracket. numpy counts in slices, off the GIL, so a large body is measured before any Python object
    is built for it."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    count = 1
    step = 1 << 22
    for start in range(0, len(buffer), step):
        part = buffer[start : start + step]
        count += int(np.count_nonzero(part == ord(","))) + int(np.count_nonzero(part == ord("[")))
        count += int(np.count_nonzero(part == ord("{")))
    return count
