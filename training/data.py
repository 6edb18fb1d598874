"""Data sources -> arrays: scikit-learn's digits, .npy, .npz, .csv and .parquet files, and folders of images.

Every problem with a source is found here, before training starts, and reported as a DataError
that names the source and says what was expected and what was found.
"""

from __future__ import annotations

import csv
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_ROWS = 10  # fewer rows than this cannot be split into training, validation and calibration
ACCEPTED = "'digits', a .npy, .npz, .csv or .parquet file, or a folder of PNG or JPEG images"
TABLE_SUFFIXES = (".csv", ".parquet")  # the sources whose columns have names and can be chosen
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


class DataError(ValueError):
    """A data source that cannot be used; the message starts with the source's name."""

    def __init__(self, source: str | Path, problem: str) -> None:
        super().__init__(f"{source}: {problem}")


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # (N, *input_shape) float32, raw units, all finite
    y: np.ndarray | None  # (N,) labels, or None
    source: str  # "digits" or the path as the user gave it
    kind: str  # "digits" | "images" (a folder) | "array" (npy/npz) | "tabular" (csv, parquet)
    value_range: tuple[float, float] | None = None  # the values' known range: digits 0..16, pixels 0..255
    resized: bool = False  # images were resized to one size (so the service resizes uploads too)
    feature_names: list[str] | None = None  # a table's column names, one per feature; None without a header

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def default_likelihood(self) -> str:
        return "bernoulli" if self.kind in ("digits", "images") else "gaussian"


def load_dataset(
    source: str,
    *,
    columns: list[str] | None = None,
    label_column: str | None = None,
    channels: int | None = None,
    image_size: tuple[int, int] | None = None,
) -> Dataset:
    """Load and check a data source; raises DataError naming the source and the problem.

    For a table (.csv, .parquet): `columns`, the feature columns in order (default: every column but the
    label for a CSV, which must all be numeric; every numeric column for Parquet, whose types are declared),
    and `label_column`, which is never a feature. Columns are named by the header, or by 0-based index in a
    CSV without one. For a folder of images: `channels` 1 or 3 (default: 3 if any image has colour), and
    `image_size` (H, W) to resize to (default: every image must already share one size).
    """
    path = Path(source)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        if columns is not None:
            raise DataError(source, "columns can be chosen in .csv and .parquet tables only")
        if label_column is not None:
            raise DataError(source, "a label column can be chosen in .csv and .parquet tables only")
    if source == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = digits.data.reshape(-1, 1, 8, 8).astype(np.float32)
        return Dataset(x, digits.target.astype(np.int64), "digits", "digits", value_range=(0.0, 16.0))
    if path.is_dir():
        x, y = _read_images(source, path, channels, image_size)
        return Dataset(
            _checked_features(source, x), y, source, "images", value_range=(0.0, 255.0), resized=image_size is not None
        )
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz", *TABLE_SUFFIXES):
        raise DataError(source, f"unsupported data source; expected {ACCEPTED}")
    if not path.is_file():
        raise DataError(source, "no such file")
    if suffix in TABLE_SUFFIXES:
        reader = _read_csv if suffix == ".csv" else read_parquet
        table = reader(source, path, columns, label_column)
        x = _checked_features(source, table.x)
        return Dataset(x, _checked_labels(source, table.y, len(x)), source, "tabular", feature_names=table.names)
    x, y = _read_npy(source, path) if suffix == ".npy" else _read_npz(source, path)
    return Dataset(_checked_features(source, x), _checked_labels(source, y, len(x)), source, "array")


def _read_npy(source: str, path: Path) -> tuple[np.ndarray, None]:
    try:
        return np.load(path, allow_pickle=False), None
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(source, f"not a readable .npy array ({exc})") from None


def _read_npz(source: str, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            arrays = {name: archive[name] for name in ("x", "y") if name in names}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(source, f"not a readable .npz archive ({exc})") from None
    if "x" not in arrays:
        raise DataError(source, f"expected an array named 'x' (and optionally 'y'); found {names or 'none'}")
    return arrays["x"], arrays.get("y")


def _read_images(
    source: str, folder: Path, channels: int | None, size: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Every PNG or JPEG below `folder` -> (N, C, H, W) pixels 0..255; labels from sub-folder names."""
    from PIL import Image, UnidentifiedImageError

    from service.core.images import GRAY_MODES, image_to_array

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(source, "the folder holds no PNG or JPEG images (searched recursively)")
    images = []
    for file in files:
        try:
            with Image.open(file) as image:
                image.load()
                images.append(image.copy())
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(file, f"cannot be read as an image ({exc})") from None
    if channels is None:
        channels = 1 if all(image.mode in GRAY_MODES for image in images) else 3
    if size is None:
        first = images[0]
        for file, image in zip(files, images, strict=False):
            if image.size != first.size:
                raise DataError(
                    file,
                    f"is {image.width}x{image.height} pixels but {files[0].name} is {first.width}x{first.height}; "
                    "images must share one size, or pass --image-size H,W to resize them",
                )
    x = np.stack([image_to_array(image, channels, size) for image in images])
    parents = [str(file.parent.relative_to(folder)) for file in files]
    labels = np.asarray(parents) if any(p != "." for p in parents) else None
    return x, labels


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Table:
    """The chosen columns of a table: features, labels and the features' names."""

    x: np.ndarray  # (N, D) float64
    y: np.ndarray | None  # (N,) labels, or None
    names: list[str] | None  # D column names; None for a CSV without a header


def choose_columns(
    source: str, header: list[str], columns: list[str] | None, label_column: str | None, numeric: list[bool]
) -> tuple[list[int], int | None]:
    """(feature column indices, label column index) in `header`; `numeric[i]` says whether column i can be a
    feature. Without `columns`, the features are every numeric column but the label, in file order."""
    label = None if label_column is None else _find(source, header, label_column, "label column")
    if columns is None:
        chosen = [i for i, ok in enumerate(numeric) if ok and i != label]
        if not chosen:
            raise DataError(source, f"no numeric feature columns; the columns are {header}")
        return chosen, label
    if len(set(columns)) != len(columns):
        twice = sorted({c for c in columns if columns.count(c) > 1})
        raise DataError(source, f"columns {twice} are chosen more than once")
    chosen = [_find(source, header, name, "column") for name in columns]
    if label is not None and label in chosen:
        raise DataError(source, f"the label column {label_column!r} cannot also be a feature column")
    return chosen, label


def _find(source: str, header: list[str], name: str, what: str) -> int:
    """A column's index: by name, else by 0-based index (a CSV without a header has only indices)."""
    if name in header:
        return header.index(name)
    if name.isdigit() and int(name) < len(header):
        return int(name)
    raise DataError(source, f"{what} {name!r} not found; the columns are {header}")


def label_values(values: list) -> np.ndarray:
    """Labels as given: integers where every label is a whole number, floats where all are numbers, else text."""
    labels = np.asarray([str(v).strip() for v in values])
    if len(labels) and all(_is_number(v) for v in labels):
        numbers = labels.astype(np.float64)
        return numbers.astype(np.int64) if np.all(numbers == np.round(numbers)) else numbers
    return labels


def _read_csv(source: str, path: Path, columns: list[str] | None, label_column: str | None) -> Table:
    try:
        with path.open(newline="") as f:
            rows = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(source, f"not a readable CSV file ({exc})") from None
    if not rows:
        raise DataError(source, "the file is empty; expected rows of numeric columns")
    # A first row with any non-numeric field is a header: data rows must be numeric throughout.
    has_header = not all(_is_number(cell) for cell in rows[0])
    header = [cell.strip() for cell in rows[0]] if has_header else [str(i) for i in range(len(rows[0]))]
    body = rows[1:] if has_header else rows
    first_line = 2 if has_header else 1
    for offset, row in enumerate(body):
        if len(row) != len(header):
            raise DataError(
                source, f"line {first_line + offset} has {len(row)} fields; expected {len(header)} like the first line"
            )
    # Every column may be a feature: a CSV declares no types, so a stray word in a feature column is an error
    # below, not a reason to drop the column.
    chosen, label = choose_columns(source, header, columns, label_column, [True] * len(header))
    labels = None if label is None else label_values([row[label] for row in body])
    values = np.empty((len(body), len(chosen)), dtype=np.float64)
    for i, row in enumerate(body):
        for j, column in enumerate(chosen):
            try:
                values[i, j] = float(row[column])
            except ValueError:
                raise DataError(
                    source,
                    f"column {column} ({header[column]!r}) is not numeric: line {first_line + i} has "
                    f"{row[column].strip()!r}",
                ) from None
    return Table(values, labels, [header[c] for c in chosen] if has_header else None)


def read_parquet(source: str, path: Path, columns: list[str] | None, label_column: str | None) -> Table:
    """The chosen columns of a Parquet file, read one row group at a time into one float64 array, so memory
    holds the result and one row group of the chosen columns, never the whole file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(source, f"not a readable Parquet file ({exc})") from None
    schema = parquet.schema_arrow
    types = [schema.field(i).type for i in range(len(schema))]
    numeric = [pa.types.is_integer(t) or pa.types.is_floating(t) for t in types]
    chosen, label = choose_columns(source, schema.names, columns, label_column, numeric)
    for i in chosen:
        if not numeric[i]:
            raise DataError(source, f"column {schema.names[i]!r} is not numeric: its Parquet type is {types[i]}")
    n = parquet.metadata.num_rows
    if n == 0:
        raise DataError(source, "the file has no rows")
    names = [schema.names[i] for i in chosen]
    values = np.empty((n, len(chosen)), dtype=np.float64)
    labels: list = []
    start = 0
    for group in range(parquet.num_row_groups):
        read = names + ([schema.names[label]] if label is not None else [])
        try:
            batch = parquet.read_row_group(group, columns=read)
        except (pa.ArrowException, OSError) as exc:
            raise DataError(source, f"row group {group} is not readable ({exc})") from None
        for j, name in enumerate(names):
            column = batch.column(name)
            _no_nulls(source, name, column, start)
            values[start : start + len(batch), j] = column.to_numpy()
        if label is not None:
            _no_nulls(source, schema.names[label], batch.column(schema.names[label]), start)
            labels.extend(batch.column(schema.names[label]).to_pylist())
        start += len(batch)
    return Table(values, None if label is None else label_values(labels), names)


def _no_nulls(source: str, name: str, column, first_row: int) -> None:
    if column.null_count:
        row = first_row + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(source, f"column {name!r} has missing values; the first is row {row}")


def _checked_features(source: str, x: np.ndarray) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise DataError(source, f"expected a numeric array, got dtype {x.dtype}")
    if x.ndim not in (2, 4):
        raise DataError(source, f"expected 2-D N×D or 4-D N×C×H×W data, got shape {tuple(x.shape)}")
    if len(x) < MIN_ROWS:
        raise DataError(source, f"expected at least {MIN_ROWS} rows, got {len(x)}")
    if math.prod(x.shape[1:]) == 0:
        raise DataError(source, f"expected at least one feature per row, got shape {tuple(x.shape)}")
    x = x.astype(np.float64)
    bad = ~np.isfinite(x.reshape(len(x), -1))
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise DataError(
            source, f"{int(bad.sum())} values are NaN or infinite, in {len(rows)} rows; the first is row {rows[0]}"
        )
    if np.abs(x).max() > np.finfo(np.float32).max:
        raise DataError(source, "values exceed the float32 range")
    return x.astype(np.float32)


def _checked_labels(source: str, y: np.ndarray | None, n: int) -> np.ndarray | None:
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise DataError(source, f"expected labels y with one value per row ({n}), got shape {tuple(y.shape)}")
    return y


def fit_preprocessing(
    x: np.ndarray, likelihood: str, value_range: tuple[float, float] | None = None, scaling: str = "standard"
) -> tuple[float | list[float], float | list[float]]:
    """(offset, scale) with x_model = (x_raw - offset) / scale, fitted on x (N, *input_shape).

    bernoulli, or scaling "range": one offset and scale mapping the data's range (the known `value_range`,
    else the observed one) onto [0, 1], the same for every feature: pixels share their units, and a
    near-constant pixel must not be blown up by a tiny standard deviation. gaussian with scaling "standard":
    per-feature mean and standard deviation; a constant feature gets scale 1.
    """
    if likelihood == "bernoulli" or scaling == "range":
        low, high = value_range if value_range is not None else (float(x.min()), float(x.max()))
        return low, (high - low) if high > low else 1.0
    if likelihood == "gaussian":
        flat = x.reshape(len(x), -1).astype(np.float64)
        mean, std = flat.mean(axis=0), flat.std(axis=0)
        constant = std <= 1e-12 * np.maximum(1.0, np.abs(mean))
        return mean.tolist(), np.where(constant, 1.0, std).tolist()
    raise ValueError(f"unknown likelihood {likelihood!r}; expected 'bernoulli' or 'gaussian'")
