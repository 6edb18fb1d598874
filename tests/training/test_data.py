"""Every data source, and every way a source can be unusable, named before training starts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.data import DataError, fit_preprocessing, load_dataset


def error_of(source, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        load_dataset(str(source), **kwargs)
    return str(err.value)


def test_digits():
    data = load_dataset("digits")
    assert data.x.shape == (1797, 1, 8, 8) and data.x.dtype == np.float32
    assert (data.x.min(), data.x.max()) == (0.0, 16.0)
    assert data.y.shape == (1797,) and set(data.y.tolist()) == set(range(10))
    assert (data.kind, data.default_likelihood, data.input_shape) == ("digits", "bernoulli", (1, 8, 8))


def test_npy_flat_and_images(tmp_path):
    np.save(tmp_path / "flat.npy", np.arange(60, dtype=np.float64).reshape(12, 5))
    np.save(tmp_path / "img.npy", np.zeros((10, 3, 4, 4), dtype=np.uint8))
    flat = load_dataset(str(tmp_path / "flat.npy"))
    assert flat.input_shape == (5,) and flat.y is None and flat.default_likelihood == "gaussian"
    assert flat.x[2].tolist() == [10, 11, 12, 13, 14]
    assert load_dataset(str(tmp_path / "img.npy")).input_shape == (3, 4, 4)


def test_npz_with_labels(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((10, 3)), y=np.arange(10))
    data = load_dataset(str(tmp_path / "d.npz"))
    assert data.x.shape == (10, 3) and data.y.tolist() == list(range(10))


def test_csv_with_and_without_header(tmp_path):
    rows = "\n".join(f"{i},{i * 2.5},{-i}" for i in range(10))
    (tmp_path / "plain.csv").write_text(rows + "\n")
    (tmp_path / "head.csv").write_text("a,b,c\n" + rows + "\n")
    for name in ("plain.csv", "head.csv"):
        data = load_dataset(str(tmp_path / name))
        assert data.x.shape == (10, 3) and data.x[4].tolist() == [4.0, 10.0, -4.0]
        assert data.kind == "tabular"


def test_csv_label_column_by_name_and_index(tmp_path):
    (tmp_path / "l.csv").write_text(
        "a,label,b\n" + "\n".join(f"{i},{'odd' if i % 2 else 'even'},{i}" for i in range(10))
    )
    data = load_dataset(str(tmp_path / "l.csv"), label_column="label")
    assert data.x.shape == (10, 2) and data.y[:3].tolist() == ["even", "odd", "even"]
    assert load_dataset(str(tmp_path / "l.csv"), label_column="1").y[1] == "odd"


def test_missing_file(tmp_path):
    assert error_of(tmp_path / "none.csv") == f"{tmp_path / 'none.csv'}: no such file"


def test_unsupported_source():
    assert (
        error_of("data.feather") == "data.feather: unsupported data source; "
        "expected 'digits', a .npy, .npz, .csv or .parquet file, or a folder of PNG or JPEG images"
    )


def test_corrupt_npy(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"garbage bytes")
    assert error_of(tmp_path / "bad.npy").startswith(f"{tmp_path / 'bad.npy'}: not a readable .npy array (")


def test_npz_without_x(tmp_path):
    np.savez(tmp_path / "d.npz", features=np.ones((10, 3)))
    assert (
        error_of(tmp_path / "d.npz")
        == f"{tmp_path / 'd.npz'}: expected an array named 'x' (and optionally 'y'); found ['features']"
    )


def test_npz_with_mismatched_labels(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((10, 3)), y=np.arange(9))
    assert (
        error_of(tmp_path / "d.npz")
        == f"{tmp_path / 'd.npz'}: expected labels y with one value per row (10), got shape (9,)"
    )


def test_wrong_number_of_dimensions(tmp_path):
    np.save(tmp_path / "v.npy", np.ones(20))
    assert (
        error_of(tmp_path / "v.npy") == f"{tmp_path / 'v.npy'}: expected 2-D N×D or 4-D N×C×H×W data, got shape (20,)"
    )


def test_non_numeric_array(tmp_path):
    np.save(tmp_path / "s.npy", np.array([["a", "b"]] * 10))
    assert error_of(tmp_path / "s.npy") == f"{tmp_path / 's.npy'}: expected a numeric array, got dtype <U1"


def test_non_numeric_csv_column(tmp_path):
    lines = ["age,height"] + [f"{i},{170 + i}" for i in range(10)]
    lines[7] = "abc,176"
    (tmp_path / "p.csv").write_text("\n".join(lines))
    assert error_of(tmp_path / "p.csv") == f"{tmp_path / 'p.csv'}: column 0 ('age') is not numeric: line 8 has 'abc'"


def test_nan_and_inf(tmp_path):
    x = np.ones((12, 2))
    x[3, 1], x[8, 0] = np.nan, np.inf
    np.save(tmp_path / "n.npy", x)
    assert (
        error_of(tmp_path / "n.npy")
        == f"{tmp_path / 'n.npy'}: 2 values are NaN or infinite, in 2 rows; the first is row 3"
    )


def test_ragged_csv(tmp_path):
    (tmp_path / "r.csv").write_text("1,2,3\n4,5,6\n7,8\n")
    assert error_of(tmp_path / "r.csv") == f"{tmp_path / 'r.csv'}: line 3 has 2 fields; expected 3 like the first line"


def test_too_few_rows(tmp_path):
    (tmp_path / "few.csv").write_text("1,2\n3,4\n")
    assert error_of(tmp_path / "few.csv") == f"{tmp_path / 'few.csv'}: expected at least 10 rows, got 2"


def test_empty_csv(tmp_path):
    (tmp_path / "e.csv").write_text("")
    assert error_of(tmp_path / "e.csv") == f"{tmp_path / 'e.csv'}: the file is empty; expected rows of numeric columns"


def test_unknown_label_column(tmp_path):
    (tmp_path / "l.csv").write_text("a,b\n" + "\n".join(f"{i},{i}" for i in range(10)))
    assert (
        error_of(tmp_path / "l.csv", label_column="y")
        == f"{tmp_path / 'l.csv'}: label column 'y' not found; the columns are ['a', 'b']"
    )


def test_bernoulli_preprocessing_maps_the_range_onto_unit_interval():
    assert fit_preprocessing(load_dataset("digits").x, "bernoulli") == (0.0, 16.0)
    assert fit_preprocessing(np.full((10, 2), 3.0), "bernoulli") == (3.0, 1.0)


def test_gaussian_preprocessing_standardises_and_spares_constant_features():
    x = np.column_stack([np.arange(10.0), np.full(10, 7.0)])
    offset, scale = fit_preprocessing(x, "gaussian")
    assert offset == [4.5, 7.0]
    assert scale == pytest.approx([np.std(np.arange(10.0)), 1.0])


def test_unknown_likelihood():
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        fit_preprocessing(np.ones((10, 2)), "poisson")


# --- tables: column names, --columns, --label-column, Parquet ---------------------------------------------


def test_csv_keeps_its_header_names(tmp_path):
    rows = "\n".join(f"{i},{i * 2},{-i}" for i in range(10))
    (tmp_path / "head.csv").write_text("speed,load,temp\n" + rows)
    (tmp_path / "plain.csv").write_text(rows)
    assert load_dataset(str(tmp_path / "head.csv")).feature_names == ["speed", "load", "temp"]
    assert load_dataset(str(tmp_path / "plain.csv")).feature_names is None


def test_csv_columns_by_name_in_the_order_given(tmp_path):
    (tmp_path / "t.csv").write_text("a,b,c,kind\n" + "\n".join(f"{i},{10 * i},{-i},x{i % 2}" for i in range(10)))
    data = load_dataset(str(tmp_path / "t.csv"), columns=["c", "a"], label_column="kind")
    assert data.feature_names == ["c", "a"] and data.x[3].tolist() == [-3.0, 3.0]
    assert data.y[:2].tolist() == ["x0", "x1"]


def write_parquet(path, n=25, row_group_size=10):
    """Three row groups: a text id, two numeric features, an integer label, and a float feature last."""
    table = pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "speed": np.arange(n, dtype=np.float32) / 2,
            "load": np.arange(n, dtype=np.int64) * 3,
            "label": np.arange(n) % 2,
            "temp": np.linspace(-1.0, 1.0, n),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def test_parquet_every_numeric_column_by_default(tmp_path):
    path = write_parquet(tmp_path / "t.parquet")
    assert pq.ParquetFile(path).num_row_groups == 3
    data = load_dataset(str(path))
    assert (data.kind, data.feature_names, data.x.shape, data.y) == (
        "tabular",
        ["speed", "load", "label", "temp"],
        (25, 4),
        None,
    )
    assert data.x[13].tolist() == np.float32([6.5, 39.0, 1.0, np.linspace(-1.0, 1.0, 25)[13]]).tolist()


def test_parquet_label_column_is_never_a_feature(tmp_path):
    data = load_dataset(str(write_parquet(tmp_path / "t.parquet")), label_column="label")
    assert data.feature_names == ["speed", "load", "temp"]
    assert data.y.dtype == np.int64 and data.y[:4].tolist() == [0, 1, 0, 1]


def test_parquet_chosen_columns_in_the_order_given(tmp_path):
    data = load_dataset(str(write_parquet(tmp_path / "t.parquet")), columns=["temp", "speed"])
    assert data.feature_names == ["temp", "speed"] and data.x[24].tolist() == [1.0, 12.0]


def test_parquet_missing_column(tmp_path):
    path = write_parquet(tmp_path / "t.parquet")
    assert (
        error_of(path, columns=["speed", "rpm"])
        == f"{path}: column 'rpm' not found; the columns are ['id', 'speed', 'load', 'label', 'temp']"
    )


def test_parquet_text_column_chosen(tmp_path):
    path = write_parquet(tmp_path / "t.parquet")
    assert error_of(path, columns=["speed", "id"]) == f"{path}: column 'id' is not numeric: its Parquet type is string"


def test_label_column_also_chosen_as_a_feature(tmp_path):
    path = write_parquet(tmp_path / "t.parquet")
    assert (
        error_of(path, columns=["speed", "label"], label_column="label")
        == f"{path}: the label column 'label' cannot also be a feature column"
    )


def test_column_chosen_twice(tmp_path):
    path = write_parquet(tmp_path / "t.parquet")
    assert error_of(path, columns=["speed", "load", "speed"]) == f"{path}: columns ['speed'] are chosen more than once"


def test_parquet_missing_values(tmp_path):
    path = tmp_path / "n.parquet"
    pq.write_table(pa.table({"a": [1.0] * 12, "b": [2.0] * 11 + [None]}), path, row_group_size=5)
    assert error_of(path) == f"{path}: column 'b' has missing values; the first is row 11"


def test_parquet_without_rows(tmp_path):
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"a": pa.array([], pa.float64())}), path)
    assert error_of(path) == f"{path}: the file has no rows"


def test_parquet_without_numeric_columns(tmp_path):
    path = tmp_path / "s.parquet"
    pq.write_table(pa.table({"name": ["x"] * 12}), path)
    assert error_of(path) == f"{path}: no numeric feature columns; the columns are ['name']"


def test_unreadable_parquet(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    assert error_of(tmp_path / "bad.parquet").startswith(f"{tmp_path / 'bad.parquet'}: not a readable Parquet file (")


def test_columns_only_for_tables(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((12, 2)))
    assert (
        error_of(tmp_path / "x.npy", columns=["a"])
        == f"{tmp_path / 'x.npy'}: columns can be chosen in .csv and .parquet tables only"
    )
    only_tables = "a label column can be chosen in .csv and .parquet tables only"
    assert error_of("digits", label_column="y") == f"digits: {only_tables}"
