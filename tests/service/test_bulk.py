"""`vae score`: files larger than memory, streamed in chunks, scored exactly as /elbo scores them."""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from service.core import bulk
from service.core.bulk import DEFAULT_CHUNK_ROWS, FIELDS, BulkError, score_file, stream_threads
from service.core.parquet_io import read_parquet_chunks

VAE = str(Path(sys.executable).with_name("vae"))


def read_scores(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def peak_rss_of_vae_score(model_dir, data, out, *options) -> int:
    """Run `vae score` and sample its resident memory every 20 ms; returns the peak in bytes."""
    command = [VAE, "score", str(model_dir), "--data", str(data), "--out", str(out), "--iw-samples", "1"]
    process = subprocess.Popen(
        [*command, *options, "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    watched, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    assert process.returncode == 0, process.stderr.read()
    return peak


def test_a_200_mb_npy_is_scored_in_bounded_memory(digits_model_dir, tmp_path, digits_client):
    """Peak memory is the libraries, the sessions and one chunk's work: 8 times the rows add next to nothing."""
    rows = np.random.default_rng(0).integers(0, 17, size=(400_000, 64)).astype(np.float64)
    data, small = tmp_path / "big.npy", tmp_path / "small.npy"
    np.save(data, rows)
    np.save(small, rows[:50_000])
    size = data.stat().st_size
    assert size > 200 * 10**6
    out = tmp_path / "scores.csv"
    small_peak = peak_rss_of_vae_score(digits_model_dir, small, tmp_path / "small.csv", "--seed", "5")
    peak = peak_rss_of_vae_score(digits_model_dir, data, out, "--seed", "5")
    # Were the file held in memory, 7/8 of it (175 MB) would come on top; the allocators' own swings stay far below.
    assert peak < small_peak + 0.25 * size, f"peak RSS {peak / 2**20:.0f} MB, {small_peak / 2**20:.0f} MB for 1/8 of it"
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
    # Chunk 1 (rows 4096..8191, the default chunk) is scored as an /elbo request with those rows and seed 5 + 1.
    assert DEFAULT_CHUNK_ROWS == 4096
    body = digits_client.post("/elbo", json={"instances": rows[4096:8192].tolist(), "iw_samples": 1, "seed": 6}).json()
    chunk = scores[4096:8192]
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
            score_file(digits_model_dir, tmp_path / name, tmp_path / f"{name}.out.csv", chunk_rows=1000, progress=False)
            == 2500
        )
    assert read_scores(tmp_path / "d.npy.out.csv") == read_scores(tmp_path / "d.csv.out.csv")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("wide.npy", np.zeros((5, 65)), "rows are shaped [65]; the model takes 64 features"),
        ("text.csv", "1,2\n3,x\n", "lines 1–2 hold a non-numeric or missing value"),
        ("short.csv", "1,2\n3,4\n", "line 1 has 2 fields; the model takes 64"),
        ("data.json", "{}", "expected a .npy, .csv or .parquet file"),
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


# --- Parquet in and out, .npy out ---------------------------------------------------------------------------
FEATURES = [f"p{i}" for i in range(64)]


def write_parquet(path: Path, rows: np.ndarray, row_group_size: int = 1000, extra: dict | None = None) -> Path:
    """rows (N, 64) as columns p0..p63, written in reverse column order (so only names can put them right)."""
    columns = {name: rows[:, i] for i, name in reversed(list(enumerate(FEATURES)))}
    pq.write_table(pa.table({**(extra or {}), **columns}), path, row_group_size=row_group_size)
    return path


def digit_rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 17, size=(n, 64)).astype(np.float64)


def test_every_input_and_output_format_gives_the_same_scores(digits_model_dir, tmp_path):
    rows = digit_rows(2500, seed=2)
    np.save(tmp_path / "d.npy", rows)
    labels = {"label": pa.array(["x"] * len(rows))}  # a non-numeric column --columns leaves out
    write_parquet(tmp_path / "d.parquet", rows, extra=labels)
    runs = [("d.npy", "a.csv"), ("d.npy", "b.npy"), ("d.npy", "c.parquet"), ("d.parquet", "e.parquet")]
    for data, out in runs:
        rows_scored = score_file(
            digits_model_dir,
            tmp_path / data,
            tmp_path / out,
            chunk_rows=1000,
            columns=FEATURES if data.endswith("t") else None,
            progress=False,
        )
        assert rows_scored == 2500
    reference = read_scores(tmp_path / "a.csv")
    assert list(reference[0]) == FIELDS
    records = np.load(tmp_path / "b.npy")
    assert records.shape == (2500,) and records.dtype.names == tuple(FIELDS)
    assert records.dtype["row"] == np.int64 and records.dtype["is_anomaly"] == np.bool_
    assert records["row"].tolist() == list(range(2500))
    for out in ("c.parquet", "e.parquet"):
        table = pq.read_table(tmp_path / out)
        assert table.column_names == FIELDS and pq.ParquetFile(tmp_path / out).metadata.num_row_groups == 3
        assert table.schema.field("row").type == pa.int64() and table.schema.field("is_anomaly").type == pa.bool_()
        for name in FIELDS:
            assert table.column(name).to_pylist() == records[name].tolist(), (out, name)
    for name in FIELDS:
        parse = {"row": int, "is_anomaly": lambda v: v == "true"}.get(name, float)
        assert [parse(r[name]) for r in reference] == records[name].tolist(), name


def test_csv_output_is_plain_text_with_a_header(digits_model_dir, tmp_path):
    np.save(tmp_path / "d.npy", digit_rows(3, seed=3))
    score_file(digits_model_dir, tmp_path / "d.npy", tmp_path / "o.csv", progress=False)
    lines = (tmp_path / "o.csv").read_text().splitlines()
    assert lines[0] == ",".join(FIELDS)
    assert [line.split(",")[0] for line in lines[1:]] == ["0", "1", "2"]
    assert {line.split(",")[6] for line in lines[1:]} <= {"true", "false"}


def parquet_error(digits_model_dir, tmp_path, path, columns=None, out="o.csv"):
    with pytest.raises(BulkError) as err:
        score_file(digits_model_dir, path, tmp_path / out, columns=columns, progress=False)
    assert not (tmp_path / out).exists()
    return str(err.value)


def test_bad_parquet_files_and_columns_are_named(digits_model_dir, tmp_path):
    rows = digit_rows(10, seed=4)
    good = write_parquet(tmp_path / "good.parquet", rows, extra={"label": pa.array(["x"] * 10)})
    assert parquet_error(digits_model_dir, tmp_path, good, ["p0", "nope", "p1"]) == (
        f"{good}: no column named 'nope'; it has label, {', '.join(reversed(FEATURES))}"
    )
    assert parquet_error(digits_model_dir, tmp_path, good, ["label", *FEATURES[1:]]) == (
        f"{good}: column 'label' holds string, not numbers"
    )
    assert parquet_error(digits_model_dir, tmp_path, good, FEATURES[:3]) == (
        f"{good}: --columns names 3 columns; the model takes 64 features (choose them with --columns)"
    )
    numbers = write_parquet(tmp_path / "numbers.parquet", rows, extra={"id": pa.array(range(10))})
    assert parquet_error(digits_model_dir, tmp_path, numbers) == (
        f"{numbers}: it has 65 columns; the model takes 64 features (choose them with --columns)"
    )
    holes = tmp_path / "holes.parquet"
    table = pa.table({name: pa.array([*rows[:, i][:7], None, *rows[:, i][8:]]) for i, name in enumerate(FEATURES)})
    pq.write_table(table, holes, row_group_size=5)
    assert parquet_error(digits_model_dir, tmp_path, holes) == f"{holes}: row 7, column 'p0' is missing (null)"
    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet")
    assert parquet_error(digits_model_dir, tmp_path, fake).startswith(f"{fake}: not a readable Parquet file (")
    np.save(tmp_path / "d.npy", rows)
    assert parquet_error(digits_model_dir, tmp_path, tmp_path / "d.npy", FEATURES) == (
        f"{tmp_path / 'd.npy'}: --columns picks columns of a Parquet file by name; this is a .npy file"
    )
    assert parquet_error(digits_model_dir, tmp_path, tmp_path / "d.npy", out="o.json") == (
        f"{tmp_path / 'o.json'}: expected an output file ending .csv, .npy or .parquet"
    )


def test_a_run_that_fails_midway_leaves_no_output(digits_model_dir, tmp_path):
    rows = digit_rows(3000, seed=5)
    rows[2500, 0] = 99.0  # chunk 2 of 3 is refused after chunks 0 and 1 were written
    write_parquet(tmp_path / "d.parquet", rows)
    with pytest.raises(BulkError) as err:
        score_file(
            digits_model_dir,
            tmp_path / "d.parquet",
            tmp_path / "o.parquet",
            chunk_rows=1000,
            columns=FEATURES,
            progress=False,
        )
    assert str(err.value) == (
        f"{tmp_path / 'd.parquet'}: rows 2000–2999: instances[500]: feature 0 is 99, outside the model's data range "
        "[0, 16] (bernoulli likelihood)"
    )
    assert not (tmp_path / "o.parquet").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.parquet"]  # nor a hidden partial file


@pytest.mark.parametrize("streams", [1, 3])
def test_a_run_that_fails_midway_leaves_no_output_whatever_the_streams(digits_model_dir, tmp_path, streams):
    rows = digit_rows(5000, seed=5)
    rows[2500, 0] = 99.0  # chunk 2 of 5 is refused while the chunks beside it are being scored
    np.save(tmp_path / "d.npy", rows)
    with pytest.raises(BulkError) as err:
        score_file(
            digits_model_dir, tmp_path / "d.npy", tmp_path / "o.npy", chunk_rows=1000, progress=False, streams=streams
        )
    assert str(err.value) == (
        f"{tmp_path / 'd.npy'}: rows 2000–2999: instances[500]: feature 0 is 99, outside the model's data range "
        "[0, 16] (bernoulli likelihood)"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npy"]


def test_a_file_that_breaks_while_chunks_are_being_scored_leaves_no_output(digits_model_dir, tmp_path):
    """A bad line found by the reader after the switch to two chunks at once, with chunks still in the pool."""
    rows = digit_rows(1000, seed=10)
    lines = [",".join(f"{v:g}" for v in row) for row in rows]
    lines[850] = lines[850].replace("0", "x", 1) if "0" in lines[850] else "x," + lines[850][2:]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(BulkError) as err:
        score_file(digits_model_dir, tmp_path / "d.csv", tmp_path / "o.csv", chunk_rows=100, progress=False, streams=2)
    assert str(err.value) == f"{tmp_path / 'd.csv'}: lines 801–900 hold a non-numeric or missing value"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv"]


def test_the_answers_are_the_same_however_many_chunks_are_scored_at_once(digits_model_dir, tmp_path):
    """Chunk i is seeded seed + i and written in file order, whichever thread scores it and whenever it ends."""
    np.save(tmp_path / "d.npy", digit_rows(2900, seed=8))
    answers = []
    for streams in (1, 2, 3, None):
        out = tmp_path / f"o{streams}.npy"
        assert (
            score_file(digits_model_dir, tmp_path / "d.npy", out, chunk_rows=300, progress=False, streams=streams)
            == 2900
        )
        answers.append(np.load(out))
    assert answers[0]["row"].tolist() == list(range(2900))
    for other in answers[1:]:
        assert other.tobytes() == answers[0].tobytes()


def test_streams_share_the_cores_out_unless_one_chunk_runs_at_a_time(monkeypatch):
    """Each stream's runtime calls get threads of their own; one stream, or a file of one chunk, gets every core."""
    monkeypatch.setattr(bulk, "available_cores", lambda: 8)
    assert stream_threads(1, 10**6, 4096) == 0  # 0: every core
    assert stream_threads(2, 4096, 4096) == 0  # one chunk: only one stream ever runs
    assert stream_threads(2, 4097, 4096) == 4
    assert stream_threads(2, None, 4096) == 4  # a CSV's rows are not counted up front
    assert stream_threads(3, 10**6, 4096) == 2
    monkeypatch.setattr(bulk, "available_cores", lambda: 2)
    assert stream_threads(2, 10**6, 4096) == 1
    assert stream_threads(4, 10**6, 4096) == 1


@pytest.mark.parametrize("streams", [1, 2, 3])
def test_at_most_streams_plus_one_chunks_are_held(digits_model_dir, tmp_path, monkeypatch, streams):
    """The chunks read and not yet written: those being scored and the one just read, never the file."""
    from service.core import bulk

    np.save(tmp_path / "d.npy", digit_rows(4000, seed=9))
    counts = {"read": 0, "written": 0, "held": 0}
    real_read, real_open = bulk.read_chunks, bulk.open_writer

    def counting_read(*args, **kwargs):
        total, chunks = real_read(*args, **kwargs)

        def counted():
            for chunk in chunks:
                counts["read"] += 1
                counts["held"] = max(counts["held"], counts["read"] - counts["written"])
                yield chunk

        return total, counted()

    def counting_open(path, into=None):
        writer = real_open(path, into)
        write = writer.write

        def counted_write(columns):
            write(columns)
            counts["written"] += 1

        writer.write = counted_write
        return writer

    monkeypatch.setattr(bulk, "read_chunks", counting_read)
    monkeypatch.setattr(bulk, "open_writer", counting_open)
    score_file(
        digits_model_dir, tmp_path / "d.npy", tmp_path / "o.npy", chunk_rows=200, progress=False, streams=streams
    )
    assert counts["read"] == counts["written"] == 20
    assert counts["held"] == streams + 1


def test_a_parquet_file_many_chunks_long_is_scored_in_bounded_memory(digits_model_dir, tmp_path):
    """400,000 rows (205 MB as float64 in memory; 98 chunks) in row groups of 16,384, against 1/8 of them."""
    rows = digit_rows(400_000, seed=6)
    data = write_parquet(tmp_path / "big.parquet", rows, row_group_size=16_384)
    small = write_parquet(tmp_path / "small.parquet", rows[:50_000], row_group_size=16_384)
    in_memory = rows.nbytes
    del rows
    out = tmp_path / "scores.parquet"
    small_peak = peak_rss_of_vae_score(digits_model_dir, small, tmp_path / "small.parquet.out.parquet")
    peak = peak_rss_of_vae_score(digits_model_dir, data, out)
    assert pq.ParquetFile(out).metadata.num_rows == 400_000
    assert peak < small_peak + 0.25 * in_memory, (
        f"peak RSS {peak / 2**20:.0f} MB, {small_peak / 2**20:.0f} MB for 1/8 of the rows"
    )


def test_the_parquet_reader_holds_about_one_row_group(tmp_path):
    rows = digit_rows(200_000, seed=7)
    path = write_parquet(tmp_path / "d.parquet", rows, row_group_size=10_000)
    row_group_bytes = 10_000 * 64 * 8
    before, peak, first, sizes = pa.total_allocated_bytes(), 0, 0, []
    for chunk in read_parquet_chunks(path, FEATURES, 16_384):
        peak = max(peak, pa.total_allocated_bytes() - before)
        np.testing.assert_array_equal(chunk, rows[first : first + len(chunk)])
        first += len(chunk)
        sizes.append(len(chunk))
    assert first == 200_000 and max(sizes) <= 16_384
    assert peak < 3 * row_group_bytes, (
        f"Arrow held {peak / 2**20:.1f} MB for row groups of {row_group_bytes / 2**20:.1f} MB"
    )


def test_the_commands_default_chunk_is_score_files():
    from vae_cli.main import build_parser

    args = build_parser().parse_args(["score", "m", "--data", "d.npy", "--out", "o.csv"])
    assert args.chunk_rows == DEFAULT_CHUNK_ROWS == 4096
    assert args.columns is None
    assert build_parser().parse_args(["score", "m", "--data", "d", "--out", "o", "--columns", "a, b,c"]).columns == [
        "a",
        "b",
        "c",
    ]


@pytest.mark.parametrize("progress", [False, True])
def test_tqdm_is_imported_only_to_draw_a_bar(digits_model_dir, tmp_path, progress):
    np.save(tmp_path / "d.npy", np.zeros((50, 64)))
    script = (
        "import sys\n"
        "from service.core.bulk import score_file\n"
        f"score_file({str(digits_model_dir)!r}, {str(tmp_path / 'd.npy')!r}, {str(tmp_path / 'o.csv')!r}, "
        f"progress={progress})\n"
        "print('tqdm' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout == f"{progress}\n"
    assert ("score: 100%" in run.stderr) is progress


@pytest.mark.parametrize("streams", [1, 2])
def test_a_run_that_fails_leaves_the_earlier_answers_as_they_were(digits_model_dir, tmp_path, streams):
    rows = digit_rows(3000, seed=6)
    np.save(tmp_path / "d.npy", rows)
    assert score_file(digits_model_dir, tmp_path / "d.npy", tmp_path / "o.csv", chunk_rows=1000, progress=False) == 3000
    before = (tmp_path / "o.csv").read_bytes()
    for bad_row in (0, 2500):  # the first chunk fails, then a later one (until 2026-11-27 both emptied o.csv)
        rows[:] = digit_rows(3000, seed=6)
        rows[bad_row, 0] = 99.0
        np.save(tmp_path / "bad.npy", rows)
        with pytest.raises(BulkError):
            score_file(
                digits_model_dir,
                tmp_path / "bad.npy",
                tmp_path / "o.csv",
                chunk_rows=1000,
                progress=False,
                streams=streams,
            )
        assert (tmp_path / "o.csv").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npy", "d.npy", "o.csv"]


def test_vae_score_makes_only_the_sessions_it_uses(digits_model_dir, tmp_path, monkeypatch):
    from service.core import runtime

    made, make = [], runtime._session

    def counting(artifact, graph, *args, **kwargs):
        made.append(graph)
        return make(artifact, graph, *args, **kwargs)

    monkeypatch.setattr(runtime, "_session", counting)
    np.save(tmp_path / "d.npy", digit_rows(500, seed=7))
    score_file(digits_model_dir, tmp_path / "d.npy", tmp_path / "o.npy", chunk_rows=100, progress=False, iw_samples=2)
    assert set(made) == {"elbo"}
