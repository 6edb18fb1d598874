"""Turning JSON values into validated arrays, with errors that say what was expected and what arrived.

Validation is vectorised: numpy converts the whole batch at once, and only on failure do we walk
the request to name the offending instance.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from service.errors import InvalidInput, LimitExceeded


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _first_non_number(value: Any, path: str) -> tuple[str, Any] | None:
    """Depth-first search for the first leaf that is not an int or float (bool is not a number here)."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _first_non_number(item, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return path, value
    return None


def _shape_of(value: Any) -> list[int] | None:
    """The nested-list shape of one value, or None when it is ragged."""
    try:
        return list(np.shape(np.asarray(value, dtype=np.float64)))
    except (ValueError, TypeError):
        return None


def as_float_array(value: Any, field: str) -> np.ndarray:
    """A nested list of numbers as a float64 array; InvalidInput naming the first problem otherwise."""
    if not isinstance(value, list) or not value:
        raise InvalidInput(f"{field}: expected a non-empty list, got {_describe(value)}")
    try:
        # One C pass builds the array; a C-level map over its leaves gives their types. Only when a leaf is
        # not an int or a float (a string, a bool, a null, or a list because the batch is ragged) does the
        # slow walk run, to name the culprit.
        leaves = np.asarray(value, dtype=object)
        kinds = set(map(type, leaves.flat))
    except ValueError:
        kinds = {list}
    if not kinds <= {int, float}:
        found = _first_non_number(value, field)
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
    if not np.all(np.isfinite(array)):
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        raise InvalidInput(
            f"{field}{''.join(f'[{i}]' for i in index)}: expected a finite number, got {array[index]}"
        )
    return array


def parse_instances(value: Any, input_shape: list[int], max_instances: int) -> np.ndarray:
    """instances -> (B, D) float64 in raw units. Each instance is D numbers or nested lists shaped input_shape."""
    if isinstance(value, list) and len(value) > max_instances:
        raise LimitExceeded(
            f"instances: {len(value)} instances exceed the limit of {max_instances} per request (VAE_MAX_INSTANCES)"
        )
    return _shaped(as_float_array(value, "instances"), input_shape)


def check_array(array: np.ndarray, input_shape: list[int], max_instances: int) -> np.ndarray:
    """A binary (.npy) batch -> (B, D) float64, with the same checks as JSON instances."""
    if array.dtype.kind not in "iuf":
        raise InvalidInput(f"instances: expected a numeric array, got dtype {array.dtype}")
    if array.ndim < 2 or len(array) == 0:
        raise InvalidInput(f"instances: expected a non-empty batch shaped (B, ...), got shape {list(array.shape)}")
    if len(array) > max_instances:
        raise LimitExceeded(
            f"instances: {len(array)} instances exceed the limit of {max_instances} per request (VAE_MAX_INSTANCES)"
        )
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        index = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
        raise InvalidInput(f"instances{''.join(f'[{i}]' for i in index)}: expected a finite number, got {array[index]}")
    return _shaped(array, input_shape)


def _shaped(array: np.ndarray, input_shape: list[int]) -> np.ndarray:
    n_features = math.prod(input_shape)
    if list(array.shape[1:]) not in (input_shape, [n_features]):
        got = list(array.shape[1:]) if array.ndim > 1 else "a single number"
        raise InvalidInput(
            f"instances: each instance must be {n_features} numbers or nested lists shaped {input_shape}; "
            f"got instances shaped {got}"
        )
    return array.reshape(len(array), n_features)


def parse_latents(value: Any, latent_dim: int, max_instances: int) -> np.ndarray:
    """z -> (B, d) float32."""
    if isinstance(value, list) and len(value) > max_instances:
        raise LimitExceeded(f"z: {len(value)} vectors exceed the limit of {max_instances} per request (VAE_MAX_INSTANCES)")
    array = as_float_array(value, "z")
    if array.ndim != 2 or array.shape[1] != latent_dim:
        got = list(array.shape[1:]) if array.ndim > 1 else "a single number"
        raise InvalidInput(f"z: each latent vector must be {latent_dim} numbers; got vectors shaped {got}")
    return array.astype(np.float32)
