"""Every data source, and every way a source can be unusable, named before training starts."""

from __future__ import annotations

import numpy as np
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
        error_of("data.parquet") == "data.parquet: unsupported data source; "
        "expected 'digits', a .npy, .npz or .csv file, or a folder of PNG or JPEG images"
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
