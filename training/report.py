"""Pictures of a model, and `vae report DIR`: PNGs and an HTML page in DIR/report/.

Everything is computed from the model directory alone (the exported ONNX graphs, the metrics and the
stored validation sample), through the service's own engine; no torch.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from service.core.artifact import Artifact, load_artifact
from service.core.engine import VaeEngine
from service.core.runtime import OnnxRuntime

REPORT_DIR = "report"
PICTURES = {
    "curves.png": "Training curves: ELBO, reconstruction and KL per epoch (nats per input)",
    "reconstructions.png": "Validation inputs (top) and their reconstructions, the decoded posterior means (bottom)",
    "samples.png": "Samples from the prior, decoded to the mean of p(x|z)",
    "latents.png": "Posterior means of validation inputs in 2-D",
    "calibration.png": "Calibration anomaly scores with the default threshold",
}
SHOWN = 8  # inputs in the reconstruction picture
GAP = 1  # model pixels of background between neighbouring images in a grid, so each image's edge shows


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers and in CI
    import matplotlib.pyplot as plt

    return plt


def tiled(tiles: np.ndarray, rows: int, gap: int = GAP) -> np.ndarray:
    """(rows*cols, H, W, 3) colours in [0, 1] -> one RGBA picture (rows*(H+gap)-gap, cols*(W+gap)-gap, 4), row
    by row, with `gap` transparent pixels between neighbours: the page shows through, so no two images touch."""
    n, h, w, _ = tiles.shape
    cols = n // rows
    out = np.zeros((rows * (h + gap) - gap, cols * (w + gap) - gap, 4))
    for i, tile in enumerate(tiles):
        top, left = (i // cols) * (h + gap), (i % cols) * (w + gap)
        out[top : top + h, left : left + w, :3] = tile
        out[top : top + h, left : left + w, 3] = 1.0
    return out


def _image_grid(ax, images: np.ndarray, artifact: Artifact, rows: int, row_labels: list[str] | None = None) -> None:
    """(rows*cols, *input_shape) raw images -> one picture on ax, in the model's pixel range, with a gap
    between images and, when given, a label at the left of each row."""
    spec = artifact.manifest.image
    n = len(images)
    pixels = np.clip(images.reshape(n, spec.channels, spec.height, spec.width) / spec.max_value, 0, 1)
    colours = np.broadcast_to(pixels.transpose(0, 2, 3, 1), (n, spec.height, spec.width, 3))  # grey: C = 1
    ax.imshow(tiled(colours, rows), interpolation="nearest")
    ax.set_xticks([])
    centres = [r * (spec.height + GAP) + (spec.height - 1) / 2 for r in range(rows)]
    ax.set_yticks(centres if row_labels else [], row_labels or [])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)


def plot_curves(history: list[dict], path: Path) -> None:
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=100)
    for ax, term in zip(axes, ("elbo", "reconstruction", "kl"), strict=False):
        ax.plot(epochs, [row[f"train_{term}"] for row in history], label="train")
        ax.plot(epochs, [row[f"val_{term}"] for row in history], label="validation")
        ax.set_title(term)
        ax.set_xlabel("epoch")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_reconstructions(engine: VaeEngine, artifact: Artifact, x: np.ndarray, path: Path) -> None:
    plt = _pyplot()
    x = x[:SHOWN].reshape(min(SHOWN, len(x)), -1).astype(np.float64)
    reconstructed = engine.decode(engine.encode(x).mu).reshape(len(x), -1)
    if artifact.manifest.image is not None:
        fig, ax = plt.subplots(figsize=(12, 3), dpi=100)
        _image_grid(ax, np.concatenate([x, reconstructed]), artifact, rows=2, row_labels=["input", "reconstruction"])
    else:
        fig, axes = plt.subplots(1, min(4, len(x)), figsize=(12, 3), dpi=100, squeeze=False)
        for i, ax in enumerate(axes[0]):
            ax.plot(x[i], "o-", label="input")
            ax.plot(reconstructed[i], "x--", label="reconstruction")
            ax.set_xlabel("feature")
            ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_samples(engine: VaeEngine, artifact: Artifact, path: Path) -> None:
    plt = _pyplot()
    decoded = engine.sample(None, 32, seed=0, decode=True).x[0].reshape(32, -1)
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=100)
    if artifact.manifest.image is not None:
        _image_grid(ax, decoded, artifact, rows=4)
        ax.set_title("32 draws z ~ N(0, I) (seed 0), decoded: the mean of p(x|z)", fontsize="medium")
    else:  # rows of features: standardise each feature so that every column is visible
        spread = decoded.std(axis=0) + 1e-12
        shown = ax.imshow((decoded - decoded.mean(axis=0)) / spread, aspect="auto", cmap="coolwarm")
        ax.set_xlabel("feature")
        ax.set_ylabel("sample")
        fig.colorbar(shown, ax=ax, label="standardised value")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_latents(engine: VaeEngine, x: np.ndarray, y: np.ndarray | None, path: Path) -> None:
    plt = _pyplot()
    mu = engine.encode(x.reshape(len(x), -1).astype(np.float64)).mu.astype(np.float64)
    if mu.shape[1] > 2:  # principal components of the means
        centred = mu - mu.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        points, axis_label = centred @ vt[:2].T, "principal component"
    else:
        points, axis_label = np.column_stack([mu, np.zeros((len(mu), 2 - mu.shape[1]))]), "latent dimension"
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    if y is None:
        ax.scatter(points[:, 0], points[:, 1], s=10, alpha=0.7)
    else:
        for label in sorted(set(y.tolist())):
            chosen = y == label
            ax.scatter(points[chosen, 0], points[chosen, 1], s=10, alpha=0.7, label=str(label))
        ax.legend(fontsize="small", markerscale=2, ncol=2)
    ax.set_xlabel(f"{axis_label} 1")
    ax.set_ylabel(f"{axis_label} 2")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_calibration(artifact: Artifact, path: Path) -> None:
    plt = _pyplot()
    scoring = artifact.manifest.scoring
    calibration = scoring.calibration
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.hist(calibration.scores, bins=min(50, max(10, len(calibration.scores) // 5)), alpha=0.8)
    ax.axvline(
        calibration.threshold,
        color="black",
        linestyle="--",
        label=f"threshold {calibration.threshold:.2f} (fpr {calibration.fpr:g})",
    )
    ax.set_xlabel(f"anomaly score {scoring.score_label} (nats)")
    ax.set_ylabel(f"calibration rows (n = {calibration.n})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _html(artifact: Artifact, history: list[dict]) -> str:
    manifest = artifact.manifest.public()
    manifest["scoring"]["calibration"]["scores"] = (
        f"[{len(manifest['scoring']['calibration']['scores'])} sorted scores]"
    )
    training, calibration = manifest["training"], manifest["scoring"]["calibration"]
    summary = {
        "name": manifest["name"],
        "architecture": manifest["architecture"],
        "input shape": manifest["input_shape"],
        "latent dim": manifest["latent_dim"],
        "likelihood": manifest["likelihood"],
        "data": manifest["training"]["data_source"],
        "best validation ELBO": f"{training['best_val_elbo']:.3f} nats (epoch {training['best_epoch']})",
        "threshold": f"{calibration['threshold']:.3f} at fpr {calibration['fpr']:g}",
    }
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in summary.items())
    figures = "".join(
        f'<figure><img src="{name}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, caption in PICTURES.items()
    )
    columns = ["epoch", "train_elbo", "val_elbo", "val_reconstruction", "val_kl", "active_units"]
    metric_rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{row.get(c, ''):.3f}</td>" if isinstance(row.get(c), float) else f"<td>{row.get(c, '')}</td>"
            for c in columns
        )
        + "</tr>"
        for row in history
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>VAE model {html.escape(manifest["name"])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}th,td{{border:1px solid #ccc;padding:3px 8px;text-align:left}}
figure{{margin:1.5em 0}}img{{max-width:100%;border:1px solid #eee}}
pre{{background:#f6f6f6;padding:1em;overflow:auto}}</style>
</head><body>
<h1>VAE model <code>{html.escape(manifest["name"])}</code></h1>
<table>{rows}</table>
{figures}
<h2>Metrics per epoch</h2>
<table><tr>{"".join(f"<th>{c}</th>" for c in columns)}</tr>{metric_rows}</table>
<h2>Manifest</h2>
<pre>{html.escape(json.dumps(manifest, indent=2))}</pre>
</body></html>
"""


def write_report(model_dir: str | Path) -> Path:
    """Write DIR/report/: the pictures and index.html. Returns the report directory."""
    artifact = load_artifact(model_dir)
    engine = VaeEngine(artifact.manifest, OnnxRuntime(artifact))
    history = [json.loads(line) for line in (artifact.dir / "metrics.jsonl").read_text().splitlines() if line]
    with np.load(artifact.dir / "validation_sample.npz", allow_pickle=False) as sample:
        x, y = sample["x"], sample["y"] if "y" in sample.files else None
    out = artifact.dir / REPORT_DIR
    out.mkdir(exist_ok=True)
    plot_curves(history, out / "curves.png")
    plot_reconstructions(engine, artifact, x, out / "reconstructions.png")
    plot_samples(engine, artifact, out / "samples.png")
    plot_latents(engine, x, y, out / "latents.png")
    plot_calibration(artifact, out / "calibration.png")
    (out / "index.html").write_text(_html(artifact, history))
    return out
