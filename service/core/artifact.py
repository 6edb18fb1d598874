"""The model directory: the one manifest schema, its writer helpers and its one loader.

Training writes a directory with `write_manifest`; serving, scoring and evaluation read it with
`load_artifact`. Both sides use the classes below, so writer and reader cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
import math
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.core.errors import ArtifactError

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# The exported graphs must match the eager model to this absolute tolerance, or export fails.
PARITY_TOLERANCE = 1e-4
RUNTIMES = ("onnx", "torchscript")


def check_runtime(runtime: str) -> None:
    """ValueError naming the runtimes, for any other name."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; expected one of {', '.join(RUNTIMES)}")


Likelihood = Literal["bernoulli", "gaussian"]
GraphName = Literal["encoder", "decoder", "scorer", "elbo"]


class Preprocessing(BaseModel):
    """x_model = (x_raw - offset) / scale; each is one number or a list with one per feature."""

    model_config = ConfigDict(frozen=True)

    offset: float | list[float]
    scale: float | list[float]

    @field_validator("scale")
    @classmethod
    def _positive(cls, scale: float | list[float]) -> float | list[float]:
        values = scale if isinstance(scale, list) else [scale]
        if not all(math.isfinite(v) and v > 0 for v in values):
            raise ValueError("every scale must be finite and > 0")
        return scale

    @cached_property
    def _offset(self) -> np.ndarray:
        return np.asarray(self.offset, dtype=np.float64)

    @cached_property
    def _scale(self) -> np.ndarray:
        return np.asarray(self.scale, dtype=np.float64)

    def to_model(self, x_raw: np.ndarray) -> np.ndarray:
        """(B, D) raw values -> (B, D) model-space float64."""
        x_model: np.ndarray = (x_raw - self._offset) / self._scale
        return x_model

    def to_raw(self, x_model: np.ndarray) -> np.ndarray:
        """(B, D) model-space values -> (B, D) raw units, float64."""
        x_raw: np.ndarray = x_model * self._scale + self._offset
        return x_raw

    def log_scale(self, n_features: int) -> np.ndarray:
        """ln scale_j per feature, (D,): the change of variables between model-space and raw-unit densities."""
        return np.broadcast_to(np.log(self._scale), (n_features,)).copy()


class ImageSpec(BaseModel):
    """How images map to this model's inputs: pixel p (0..255) is raw value p * max_value / 255."""

    channels: Literal[1, 3]
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    resize: bool = Field(description="uploads of another size are resized, as the training images were")
    max_value: float = Field(gt=0, description="the raw value of a white pixel (255 for images, 16 for digits)")


class Graph(BaseModel):
    """One exported network in both formats, with its tensor names."""

    onnx: str
    torchscript: str
    inputs: list[str]
    outputs: list[str]

    def file(self, runtime: str) -> str:
        return self.onnx if runtime == "onnx" else self.torchscript


class Graphs(BaseModel):
    encoder: Graph
    decoder: Graph
    # x (B, *input_shape), z (B, K, d) -> log_px (B, K) float64: the decoder and ln p(x|z) in one graph.
    # Models exported before it existed have none; the engine then decodes and scores in numpy.
    scorer: Graph | None = None
    # x, eps (B, S, d) -> log_px, log_ratio (B, S) and kl (B,), float64 in model space: the encoder, the
    # reparameterisation, the scorer, ln p(z) - ln q(z|x) and the KL in one graph (training/scorer.py ElboGraph).
    # Models exported before it existed have none; the engine then uses the encoder and the scorer.
    elbo: Graph | None = None

    def present(self) -> list[Graph]:
        return [g for g in (self.encoder, self.decoder, self.scorer, self.elbo) if g is not None]


class TrainingSummary(BaseModel):
    """How the model was made; enough to reproduce it with `vae train`."""

    data_source: str
    seed: int
    epochs: int = Field(description="epochs run, early stopping included")
    best_epoch: int
    best_val_elbo: float = Field(description="mean validation ELBO (nats per input, beta = 1)")
    config: dict[str, Any] = Field(
        description="the full training configuration, with the values chosen for unset flags"
    )
    selection: list[dict[str, Any]] = Field(
        default_factory=list, description="capacities compared by held-out L_K when flags left them unset"
    )
    notes: list[str] = Field(default_factory=list, description="one line per choice made from the data's size")


# Calibration keeps at most this many scores: all of them for up to this many rows, else evenly spaced
# order statistics, which reproduce p-values to within 1/MAX_CALIBRATION_SCORES.
MAX_CALIBRATION_SCORES = 10_000


class Calibration(BaseModel):
    """Anomaly scores (-L_K, or -ELBO_L: Scoring.estimator) of a held-out split of the normal training data, and
    the default threshold."""

    n: int = Field(gt=0, description="calibration rows scored")
    scores: list[float] = Field(description="sorted ascending; all n, or evenly spaced order statistics")
    fpr: float = Field(gt=0, lt=1, description="target false-alarm rate of the default threshold")
    fpr_note: str | None = Field(
        None, description="why fpr is not the default 0.01: the calibration split was too small for it"
    )
    threshold: float = Field(description="flag a score above this: the conformal threshold at fpr")

    @field_validator("scores")
    @classmethod
    def _sorted(cls, scores: list[float]) -> list[float]:
        if not scores or any(b < a for a, b in zip(scores, scores[1:], strict=False)):
            raise ValueError("must be a non-empty ascending list")
        return scores

    @cached_property
    def sorted_scores(self) -> np.ndarray:
        return np.asarray(self.scores, dtype=np.float64)


class IwNoise(BaseModel):
    """The Monte Carlo noise of the score at one number of draws (K of -L_K, or L of -ELBO_L), measured on
    calibration rows."""

    k: int = Field(description="draws: K for the iwae estimator, L for the elbo estimator")
    noise: float = Field(description="root-mean-square over rows of the score's standard deviation across seeds")
    iqr: float = Field(description="interquartile range of the calibration scores at this K")


class IwSelection(BaseModel):
    """The draws chosen from the data: the smallest rung of the ladder whose noise is at most `tolerance` x IQR."""

    tolerance: float
    rows: int = Field(description="calibration rows the noise was measured on")
    repeats: int = Field(description="seeds per row")
    ladder: list[IwNoise]


Estimator = Literal["iwae", "elbo"]  # the bound whose negative is the anomaly score: L_K, or the ELBO


class Scoring(BaseModel):
    """How the service scores by default: the estimator, K and L the threshold was calibrated with.

    The anomaly score is -L_K ("iwae") or -ELBO_L ("elbo"); manifests written before "elbo" existed have no
    n_samples and score by -L_K, as they always did."""

    estimator: Estimator = Field(
        "iwae", description="iwae: the anomaly score is -log_likelihood (L_K); elbo: it is -elbo (ELBO_L)"
    )
    iw_samples: int = Field(gt=0, description="K of the importance-weighted bound L_K: a request's default")
    n_samples: int = Field(1, gt=0, description="L, the ELBO's draws: a request's default")
    seed: int = Field(description="seed of the calibration run")
    iw_selection: IwSelection | None = Field(
        None, description="how K (iwae) or L (elbo) was chosen, when `vae train` chose it"
    )
    calibration: Calibration

    @property
    def score_label(self) -> str:
        """The default anomaly score as people read it: "−ELBO_L, L = 16" or "−L_K, K = 4"."""
        return f"−ELBO_L, L = {self.n_samples}" if self.estimator == "elbo" else f"−L_K, K = {self.iw_samples}"


class Manifest(BaseModel):
    """manifest.json: everything a loader needs to serve the directory."""

    format_version: int
    name: str
    created_at: str
    architecture: str
    input_shape: list[int]
    latent_dim: int = Field(gt=0)
    likelihood: Likelihood
    preprocessing: Preprocessing
    graphs: Graphs
    files: dict[str, str] = Field(description="sha256 of every file in the directory but this one")
    training: TrainingSummary
    parity: dict[str, dict[str, float]] = Field(
        description="largest |exported - eager| per runtime and graph on a check batch"
    )
    scoring: Scoring | None = Field(None, description="set by calibration; required to serve")
    image: ImageSpec | None = Field(None, description="set when the model takes images")
    feature_names: list[str] | None = Field(
        None, description="the table columns the model was trained on, in input order; None without names"
    )

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, shape: list[int]) -> list[int]:
        if not shape or any(d <= 0 for d in shape):
            raise ValueError(f"input_shape must be non-empty positive sizes, got {shape}")
        return shape

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        n = self.n_features
        for name in ("offset", "scale"):
            value = getattr(self.preprocessing, name)
            if isinstance(value, list) and len(value) != n:
                raise ValueError(f"preprocessing.{name} has {len(value)} values, input_shape has {n} features")
        if self.feature_names is not None and len(self.feature_names) != n:
            raise ValueError(f"feature_names has {len(self.feature_names)} names, input_shape has {n} features")
        return self

    @cached_property  # read a few times for every request
    def n_features(self) -> int:
        return math.prod(self.input_shape)

    @cached_property
    def log_jacobian(self) -> np.ndarray:
        """(D,) added per feature to model-space log-densities to give raw-unit ones: -ln scale_j for gaussian.

        Bernoulli likelihoods are probabilities of the scaled values, so they need no change of variables.
        """
        if self.likelihood == "bernoulli":
            return np.zeros(self.n_features)
        return -self.preprocessing.log_scale(self.n_features)

    def public(self) -> dict[str, Any]:
        """The fields served at GET /v1/model: all of them, but the paths where the server keeps its files
        (the data file and the output directory training was given) are cut to their last part."""
        card = self.model_dump(mode="json")
        training = card["training"]
        training["data_source"] = _last_part(training["data_source"])
        for key in SERVER_PATH_OPTIONS:
            if isinstance(training["config"].get(key), str):
                training["config"][key] = _last_part(training["config"][key])
        return card


SERVER_PATH_OPTIONS = ("data", "out")  # training options that hold a path on the training machine


def _last_part(path: str) -> str:
    return path.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_version(model_dir: Path) -> str:
    """The first 12 hex digits of the sha256 of the directory's manifest. The manifest lists the sha256 of every
    other file, so every export has a version of its own."""
    return hashlib.sha256((model_dir / MANIFEST_NAME).read_bytes()).hexdigest()[:12]


def write_manifest(model_dir: Path, manifest: Manifest) -> Path:
    path = model_dir / MANIFEST_NAME
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return path


class Artifact:
    """A verified model directory: its manifest and the paths of its files."""

    def __init__(self, model_dir: Path, manifest: Manifest) -> None:
        self.dir = model_dir
        self.manifest = manifest

    def path(self, graph: GraphName, runtime: str) -> Path:
        graph_spec: Graph | None = getattr(self.manifest.graphs, graph)
        if graph_spec is None:
            raise ArtifactError(f"{self.dir / MANIFEST_NAME} has no {graph} graph")
        return self.dir / graph_spec.file(runtime)

    def read_verified(self, graph: GraphName, runtime: str) -> bytes:
        """A graph file's bytes, checked against the manifest's sha256 as they are read: for a runtime that loads
        a graph long after the directory was loaded (OnnxRuntime's lazy sessions), by when a new export may have
        replaced the directory. What is checked is then exactly what is loaded."""
        path = self.path(graph, runtime)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ArtifactError(f"{path} cannot be read ({exc.strerror or exc}): the model directory changed") from None
        _check_sha256(path, self.manifest.files[path.name], hashlib.sha256(data).hexdigest())
        return data


def _not_a_plain_name(name: str) -> str | None:
    """Why `name` is not a plain file name inside the model directory, or None when it is one.

    A manifest is data that may come from anywhere: "../x" or "/etc/x" would make the loader read, hash
    and load files outside the directory.
    """
    if name in ("", ".", ".."):
        return "not a file name"
    if "/" in name or "\\" in name:
        return "a path, not a plain name"
    if not name.isprintable():
        return "a name with control characters"
    return None


def load_artifact(model_dir: str | Path, *, verify: bool = True, runtime: str | None = None) -> Artifact:
    """Read and check a model directory. Raises ArtifactError with a one-line reason.

    With `verify`, every file listed in the manifest must exist and match its sha256. Given the `runtime` that
    will load the graphs ("onnx" or "torchscript": `vae serve`, `vae score`, Spark), only the files it reads are
    hashed, that runtime's graphs; the rest (the checkpoint, the other format's graphs, the training metrics)
    must still exist. Nothing those paths do reads them, and hashing them was most of the time a large model took
    to load: 0.17 of 0.27 s on a 784-1024-512 MLP, whose eleven files hold 65 MB (docs/model-format.md).
    """
    if runtime is not None:
        check_runtime(runtime)
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ArtifactError(f"model directory {model_dir} does not exist")
    manifest_path = model_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ArtifactError(
            f"{manifest_path} is missing: {model_dir} is not a complete model directory "
            f"(write one with `vae train --out {model_dir}`)"
        )
    try:
        raw = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path} is not readable JSON: {exc}") from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version != FORMAT_VERSION:
        raise ArtifactError(f"{manifest_path} has format_version {version!r}; this service reads {FORMAT_VERSION}")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ArtifactError(f"{manifest_path} is invalid: {where}: {first['msg']}") from None
    graph_files = {getattr(g, rt) for g in manifest.graphs.present() for rt in RUNTIMES}
    for name in sorted(graph_files | manifest.files.keys()):
        problem = _not_a_plain_name(name)
        if problem:
            raise ArtifactError(
                f"{manifest_path} names the file {name!r}: {problem}; files must be plain names in {model_dir}"
            )
    unlisted = sorted(graph_files - manifest.files.keys())
    if unlisted:
        raise ArtifactError(f"{manifest_path} lists no sha256 for {', '.join(unlisted)}")
    if manifest.scoring is None:
        raise ArtifactError(f"{manifest_path} has no scoring calibration; export it again with `vae export`")
    if verify:
        loaded = manifest.files.keys() if runtime is None else {g.file(runtime) for g in manifest.graphs.present()}
        for name, expected in sorted(manifest.files.items()):
            path = model_dir / name
            if not path.is_file():
                raise ArtifactError(f"{path} is missing: the model directory is incomplete")
            if name in loaded:
                _check_sha256(path, expected, sha256_file(path))
    return Artifact(model_dir, manifest)


def _check_sha256(path: Path, expected: str, actual: str) -> None:
    if actual != expected:
        raise ArtifactError(
            f"{path} fails its sha256 check (manifest {expected[:12]}…, file {actual[:12]}…): it changed after export"
        )
