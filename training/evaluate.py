"""`vae evaluate`: score a data set through an exported model, exactly as the service does.

No torch: the rows go through ONNX Runtime and service/core/engine.py, the code behind POST /elbo.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from service.core.artifact import load_artifact
from service.core.engine import ElboOptions, VaeEngine, score_in_chunks
from service.core.runtime import load_runtime
from training.data import TABLE_SUFFIXES, DataError, Dataset, load_dataset


def anomaly_labels(dataset: Dataset, normal_label: str | None) -> np.ndarray | None:
    """1 for anomalous rows, 0 for normal ones; None without labels or without --normal-label."""
    if dataset.y is None or normal_label is None:
        return None
    labels = np.asarray(dataset.y).astype(str)
    values = sorted(set(labels.tolist()))
    if normal_label not in values:
        raise DataError(dataset.source, f"--normal-label {normal_label!r} is not among the labels {values[:20]}")
    return (labels != normal_label).astype(int)


def evaluate(
    model_dir: str | Path,
    source: str,
    *,
    iw_samples: int | None = None,
    columns: list[str] | None = None,
    label_column: str | None = None,
    normal_label: str | None = None,
    seed: int = 0,
    runtime: str = "onnx",
    plot: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Summary metrics of the model on a data set; with labels, how well its scores separate anomalies.

    A table's features are `columns`, else the columns the model was trained on (the manifest's
    feature_names), else every numeric column but the label.
    """
    artifact = load_artifact(model_dir)
    manifest = artifact.manifest
    dataset = load_dataset(source, columns=_columns(source, columns, manifest.feature_names), label_column=label_column)
    if list(dataset.input_shape) not in (manifest.input_shape, [manifest.n_features]):
        raise DataError(source, f"rows are shaped {list(dataset.input_shape)}; the model takes {manifest.input_shape}")
    _same_names(source, dataset.feature_names, manifest.feature_names)
    labels = anomaly_labels(dataset, normal_label)
    engine = VaeEngine(manifest, load_runtime(artifact, runtime))
    x = dataset.x.reshape(len(dataset.x), -1).astype(np.float64)
    elbo, log_likelihood, scores, is_anomaly = [], [], [], []
    for scored in score_in_chunks(engine, x, ElboOptions(seed=seed, iw_samples=iw_samples), progress=progress):
        elbo.append(scored.elbo)
        log_likelihood.append(scored.log_likelihood)
        scores.append(scored.decisions.anomaly_score)  # the served score: -L_K or -ELBO_L, the model's estimator
        is_anomaly.append(scored.decisions.is_anomaly)
        used_k, used_l = scored.iw_samples, scored.n_samples
    elbo, log_likelihood, scores, is_anomaly = map(np.concatenate, (elbo, log_likelihood, scores, is_anomaly))
    report = {
        "model": str(artifact.dir),
        "data": dataset.source,
        "n": len(x),
        "estimator": manifest.scoring.estimator,
        "iw_samples": used_k,
        "n_samples": used_l,
        "mean_elbo": float(elbo.mean()),
        "mean_log_likelihood": float(log_likelihood.mean()),
        "bits_per_dim": float(-log_likelihood.mean() / (manifest.n_features * math.log(2))),
        "threshold": engine.default_threshold,
        "flagged_rate": float(is_anomaly.mean()),
    }
    if labels is not None:
        report |= separation(labels, scores, is_anomaly)
    if plot is not None:
        plot_scores(scores, labels, engine.default_threshold, Path(plot))
    return report


def _columns(source: str, columns: list[str] | None, trained_on: list[str] | None) -> list[str] | None:
    """The columns to read: the ones asked for, else, from a table, the ones the model was trained on."""
    if columns is not None or not source.lower().endswith(TABLE_SUFFIXES):
        return columns
    return trained_on


def _same_names(source: str, names: list[str] | None, trained_on: list[str] | None) -> None:
    """Columns chosen by hand must be the model's features under the same names: a reordered or swapped
    column has the right shape and would be scored as garbage without a word."""
    if names is not None and trained_on is not None and names != trained_on:
        raise DataError(source, f"the columns {names} are not the model's features {trained_on}, in that order")


def separation(labels: np.ndarray, scores: np.ndarray, is_anomaly: np.ndarray) -> dict:
    """AUROC, average precision, and the rates of the model's own decisions."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    normal, anomalous = labels == 0, labels == 1
    out = {"n_normal": int(normal.sum()), "n_anomalous": int(anomalous.sum())}
    if normal.any() and anomalous.any():
        out["auroc"] = float(roc_auc_score(labels, scores))
        out["auprc"] = float(average_precision_score(labels, scores))
    out["false_alarm_rate"] = float(is_anomaly[normal].mean()) if normal.any() else None
    out["detection_rate"] = float(is_anomaly[anomalous].mean()) if anomalous.any() else None
    return out


def plot_scores(scores: np.ndarray, labels: np.ndarray | None, threshold: float, path: Path) -> None:
    """A PNG histogram of the anomaly scores, normal and anomalous apart, with the threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    bins = np.histogram_bin_edges(scores, bins=50)
    if labels is None:
        ax.hist(scores, bins=bins, alpha=0.7, label="all rows")
    else:
        ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="normal")
        ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label="anomalous")
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.2f}")
    ax.set_xlabel("anomaly score (−log-likelihood, nats)")
    ax.set_ylabel("rows")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
