"""`vae score`: files larger than memory, streamed in chunks, scored exactly as /elbo scores them."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from service.core.bulk import BulkError, score_file

VAE = str(Path(sys.executable).with_name("vae"))


def read_scores(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_a_200_mb_npy_is_scored_in_bounded_memory(digits_model_dir, tmp_path, digits_client):
    rows = np.random.default_rng(0).integers(0, 17, size=(400_000, 64)).astype(np.float64)
    data = tmp_path / "big.npy"
    np.save(data, rows)
    size = data.stat().st_size
    assert size > 200 * 10**6
    out = tmp_path / "scores.csv"
    process = subprocess.Popen(
        [
            VAE,
            "score",
            str(digits_model_dir),
            "--data",
            str(data),
            "--out",
            str(out),
            "--iw-samples",
            "1",
            "--seed",
            "5",
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watched, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    assert process.returncode == 0, process.stderr.read()
    assert peak < 0.6 * size, f"peak RSS {peak / 2**20:.0f} MB for a {size / 2**20:.0f} MB file"

    scores = read_scores(out)
    assert len(scores) == 400_000 and scores[0].keys() == {
        "row",
        "elbo",
        "reconstruction",
        "kl",
        "log_likelihood",
        "anomaly_score",
        "is_anomaly",
        "p_value",
    }
    # Chunk 1 (rows 1024..2047) is scored as an /elbo request with those rows and seed 5 + 1.
    body = digits_client.post("/elbo", json={"instances": rows[1024:2048].tolist(), "iw_samples": 1, "seed": 6}).json()
    chunk = scores[1024:2048]
    assert [float(r["elbo"]) for r in chunk] == body["elbo"]
    assert [float(r["log_likelihood"]) for r in chunk] == body["log_likelihood"]
    assert [r["is_anomaly"] == "true" for r in chunk] == body["is_anomaly"]
    assert [float(r["p_value"]) for r in chunk] == body["p_value"]


def test_csv_is_streamed_and_scores_like_the_npy(digits_model_dir, tmp_path):
    rows = np.random.default_rng(1).integers(0, 17, size=(2500, 64)).astype(np.float64)
    np.save(tmp_path / "d.npy", rows)
    with (tmp_path / "d.csv").open("w") as f:
        f.write(",".join(f"p{i}" for i in range(64)) + "\n")
        for row in rows:
            f.write(",".join(f"{v:g}" for v in row) + "\n")
    for name in ("d.npy", "d.csv"):
        assert (
            score_file(digits_model_dir, tmp_path / name, tmp_path / f"{name}.out", chunk_rows=1000, progress=False)
            == 2500
        )
    assert read_scores(tmp_path / "d.npy.out") == read_scores(tmp_path / "d.csv.out")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("wide.npy", np.zeros((5, 65)), "rows are shaped [65]; the model takes 64 features"),
        ("text.csv", "1,2\n3,x\n", "lines 1–2 hold a non-numeric or missing value"),
        ("short.csv", "1,2\n3,4\n", "line 1 has 2 fields; the model takes 64"),
        ("data.json", "{}", "expected a .npy or .csv file"),
    ],
)
def test_bad_files_are_named(digits_model_dir, tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    else:
        np.save(path, content)
    with pytest.raises(BulkError) as err:
        score_file(digits_model_dir, path, tmp_path / "out.csv", progress=False)
    assert str(err.value) == f"{path}: {message}"


def test_out_of_range_rows_are_named(digits_model_dir, tmp_path):
    rows = np.zeros((10, 64))
    rows[7, 3] = 99.0
    np.save(tmp_path / "r.npy", rows)
    result = subprocess.run(
        [
            VAE,
            "score",
            str(digits_model_dir),
            "--data",
            str(tmp_path / "r.npy"),
            "--out",
            str(tmp_path / "o.csv"),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"vae score: {tmp_path / 'r.npy'}: rows 0–9: instances[7]: feature 3 is 99, outside the model's data range "
        "[0, 16] (bernoulli likelihood)"
    )
