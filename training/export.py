"""Write a model directory from a checkpoint: ONNX, TorchScript, parity check, manifest. Atomically.

Training ends by calling `export_model_dir` with the checkpoint it just made; `vae export` calls it
with one loaded from disk. Both paths write the same directory.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from service.core import scoring
from service.core.artifact import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    MAX_CALIBRATION_SCORES,
    PARITY_TOLERANCE,
    Artifact,
    Calibration,
    Estimator,
    Graph,
    Graphs,
    ImageSpec,
    IwNoise,
    IwSelection,
    Manifest,
    Preprocessing,
    Scoring,
    TrainingSummary,
    load_artifact,
    sha256_file,
    write_manifest,
)
from service.core.engine import ElboOptions, VaeEngine, score_in_chunks, scored_bound
from service.core.runtime import OnnxRuntime, TorchScriptRuntime
from training.model import DECODER_OUTPUTS, VAE, ModelConfig
from training.ppca import is_ppca
from training.scorer import ELBO_INPUTS, ELBO_OUTPUTS, SCORER_INPUTS, SCORER_OUTPUTS, ElboGraph, scorer_for

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
SAMPLE_NAME = "validation_sample.npz"  # raw validation rows and labels, for `vae report`
CHECK_BATCH_SIZE = 64
CHECK_DRAWS = 5  # draws per check row for the scorer and ELBO graphs' parity checks
# The scorer graph sums D float64 log-densities of float32 decoder outputs; its parity is relative to the
# reference's magnitude, |exported - reference| / max(1, |reference|), since a gaussian feature far from its mean
# scales the decoder's float32 rounding by (x - mean) / sigma^2.
SCORER_PARITY_TOLERANCE = 1e-5
# The graphs held to the eager model (PARITY_TOLERANCE); the scorer and the ELBO graph are held to the numpy reference.
EAGER_GRAPHS = ("encoder", "decoder")


class ExportError(RuntimeError):
    """The export could not produce a directory that is safe to serve."""


@dataclass
class CalibrationPlan:
    """Held-out normal rows to score through the exported model, and how."""

    x_raw: np.ndarray  # (N, *input_shape) raw units, used neither for gradients nor early stopping
    iw_samples: int | None  # K: score by -L_K at this K by default; None: the estimator and its draws from the data
    fpr: float  # target false-alarm rate of the default threshold
    seed: int
    fpr_note: str | None = None  # why fpr is not the default, for the manifest


IW_LADDER = tuple(2**i for i in range(9))  # 1, 2, 4, ... 256
# K is large enough when the score's Monte Carlo noise is at most this share of the calibration scores'
# interquartile range: re-drawing the noise then moves a score by a small fraction of the normal spread.
IW_NOISE_TOLERANCE = 0.1
IW_NOISE_ROWS = 256  # calibration rows the noise is measured on
IW_NOISE_REPEATS = 4  # independent seeds per row


def estimator_options(estimator: Estimator, draws: int) -> ElboOptions:
    """The request that scores by `estimator` with `draws` draws: L_K at K = draws (one ELBO draw beside it), or
    the ELBO at L = draws (and L_1, the cheapest bound, beside it)."""
    return (
        ElboOptions(n_samples=1, iw_samples=draws)
        if estimator == "iwae"
        else ElboOptions(n_samples=draws, iw_samples=1)
    )


def estimator_scores(
    engine: VaeEngine, x: np.ndarray, seed: int, estimator: Estimator, draws: int, progress: bool = False
) -> np.ndarray:
    """The anomaly scores of rows x by `estimator` with `draws` draws: -L_K or -ELBO_L, as the service computes them."""
    options = replace(estimator_options(estimator, draws), seed=seed)
    chunks = score_in_chunks(engine, x, options, progress=progress)
    return -np.concatenate([scored_bound(estimator, chunk.elbo, chunk.log_likelihood) for chunk in chunks])


def choose_draws(engine: VaeEngine, x: np.ndarray, seed: int, estimator: Estimator) -> IwSelection:
    """The smallest K (or L) on IW_LADDER whose score noise is at most IW_NOISE_TOLERANCE x the scores' IQR."""
    return noise_ladder(
        lambda rows, rung_seed, draws: estimator_scores(engine, rows, rung_seed, estimator, draws), x, seed
    )


def noise_ladder(scores: Callable[[np.ndarray, int, int], np.ndarray], x: np.ndarray, seed: int) -> IwSelection:
    """The smallest rung of IW_LADDER whose score noise is at most IW_NOISE_TOLERANCE x the scores' IQR, for any
    Monte Carlo score: scores(rows, seed, rung) -> one score per row, rung the number of draws (K of -L_K, or L
    of -ELBO_L)."""
    rows = x[:IW_NOISE_ROWS]
    ladder = []
    for k in IW_LADDER:
        repeats = np.stack([scores(rows, seed + 7_777 * (r + 1), k) for r in range(IW_NOISE_REPEATS)])
        noise = float(np.sqrt(np.mean(np.var(repeats, axis=0, ddof=1))))
        q1, q3 = np.percentile(repeats.mean(axis=0), [25, 75])
        ladder.append(IwNoise(k=k, noise=noise, iqr=float(q3 - q1)))
        if noise <= IW_NOISE_TOLERANCE * (q3 - q1):
            break
    return IwSelection(tolerance=IW_NOISE_TOLERANCE, rows=len(rows), repeats=IW_NOISE_REPEATS, ladder=ladder)


def default_estimator(exact_posterior: bool) -> Estimator:
    """The anomaly score of a model trained with the defaults: -L_K when its encoder is the exact posterior (the
    linear, shared-noise gaussian model: probabilistic PCA), -ELBO_L otherwise.

    With an exact posterior the ELBO equals ln p(x) and L_1 is exact on every draw, so the ELBO would only add
    noise. An amortised encoder, trained on normal rows, fits their posteriors; off them its gap KL(q(z|x) ||
    p(z|x)) grows, and the ELBO counts it where L_K (as K grows) removes it. On the anomaly suite -ELBO_L detects
    better on three of the four MLP choices (blobs 0.888 -> 0.981, S-curve 0.944 -> 0.983), a little worse on
    the fourth, and alike on every linear model at several times the cost (docs/benchmark-anomaly.md).
    """
    return "iwae" if exact_posterior else "elbo"


def calibrate(
    staged: Artifact, plan: CalibrationPlan, progress: bool = False, exact_posterior: bool = False
) -> Scoring:
    """Score the calibration rows through the exported ONNX graphs with the service's own code.

    A K in the plan (`--score-iw-samples`) scores by -L_K at that K. Without one the estimator is the model's
    default (default_estimator) and its number of draws is chosen first (choose_draws); the threshold is set on
    scores of exactly that estimator, which the service then uses by default.
    """
    engine = VaeEngine(staged.manifest, OnnxRuntime(staged))
    x = plan.x_raw.reshape(len(plan.x_raw), -1).astype(np.float64)
    if plan.iw_samples is not None:
        estimator, selection, draws = "iwae", None, plan.iw_samples
    else:
        estimator = default_estimator(exact_posterior)
        selection = choose_draws(engine, x, plan.seed, estimator)
        draws = selection.ladder[-1].k
    scores = estimator_scores(engine, x, plan.seed, estimator, draws, progress)
    kept = scoring.keep_calibration_scores(scores, MAX_CALIBRATION_SCORES)
    threshold = scoring.threshold_for_fpr(kept, len(scores), plan.fpr)
    calibration = Calibration(
        n=len(scores), scores=kept.tolist(), fpr=plan.fpr, threshold=threshold, fpr_note=plan.fpr_note
    )
    options = estimator_options(estimator, draws)
    return Scoring(
        estimator=estimator,
        iw_samples=options.iw_samples,
        n_samples=options.n_samples,
        seed=plan.seed,
        calibration=calibration,
        iw_selection=selection,
    )


def make_checkpoint(
    model: VAE,
    preprocessing: Preprocessing,
    training: TrainingSummary,
    history: list[dict],
    image: ImageSpec | None = None,
    sample: tuple[np.ndarray, np.ndarray | None] | None = None,
) -> dict:
    """Weights plus everything needed to rebuild and describe the model; loads with weights_only=True.

    `sample`: up to a few hundred validation rows (raw) and their labels, kept for the report's pictures.
    """
    sample_x, sample_y = sample if sample is not None else (np.zeros((0, *model.config.input_shape)), None)
    return {
        "image": image.model_dump() if image else None,
        "validation_sample": {
            "x": torch.from_numpy(np.asarray(sample_x, dtype=np.float32)),
            "y": None if sample_y is None else [str(v) for v in sample_y],
        },
        "model_config": model.config.to_dict(),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "preprocessing": preprocessing.model_dump(),
        "training": training.model_dump(),
        "history": history,
    }


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises pickle, zip and runtime errors alike
        raise ExportError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    missing = {"model_config", "state_dict", "preprocessing", "training", "history"} - set(checkpoint)
    if missing:
        raise ExportError(f"{path}: checkpoint lacks {', '.join(sorted(missing))}")
    return checkpoint


# Checkpoints written before the decoder's constant log-variance could be per feature named it "shared".
RENAMED_WEIGHTS = {"decoder.shared.value": "decoder.constant_logvar.value"}


def model_from_checkpoint(checkpoint: dict) -> VAE:
    model = VAE(ModelConfig(**checkpoint["model_config"]))
    model.load_state_dict({RENAMED_WEIGHTS.get(k, k): v for k, v in checkpoint["state_dict"].items()})
    return model.eval()


def check_batches(config: ModelConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs spanning the model-space range the service will see, for the parity check."""
    g = torch.Generator().manual_seed(seed)
    shape = (CHECK_BATCH_SIZE, *config.input_shape)
    if config.likelihood == "bernoulli":
        x = torch.rand(shape, generator=g)
    else:
        x = 1.5 * torch.randn(shape, generator=g)
    z = 2.0 * torch.randn(CHECK_BATCH_SIZE, config.latent_dim, generator=g)  # wider than the prior
    return x, z


def check_draws(config: ModelConfig, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs for the scorer graph's parity check: x as check_batches makes it, z (B, CHECK_DRAWS, d) wider than
    the prior."""
    x, _ = check_batches(config, seed)
    g = torch.Generator().manual_seed(seed)
    return x, 2.0 * torch.randn(CHECK_BATCH_SIZE, CHECK_DRAWS, config.latent_dim, generator=g)


def _export_onnx(
    module: torch.nn.Module,
    examples: tuple[torch.Tensor, ...],
    path: Path,
    graph: Graph,
    dynamic_shapes: dict[str, dict[int, torch.export.Dim]] | None = None,
) -> None:
    """One graph to ONNX; by default the first input's axis 0 is a dynamic batch."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # silence "torchvision is not installed"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            examples,
            str(path),
            input_names=graph.inputs,
            output_names=graph.outputs,
            dynamic_shapes=dynamic_shapes or {graph.inputs[0]: {0: torch.export.Dim("batch")}},
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def _export_torchscript(module: torch.nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated in 2.13 but still the format we ship
        torch.jit.script(module).save(str(path))


def _max_abs_diff(expected: tuple[torch.Tensor, ...], actual: tuple[np.ndarray, ...]) -> float:
    return max(float(np.max(np.abs(e.numpy() - a))) for e, a in zip(expected, actual, strict=False))


def reference_log_px(model: VAE, x: torch.Tensor, z: torch.Tensor) -> np.ndarray:
    """ln p(x|z_k) (B, K) by the numpy reference (scoring.log_prob_per_feature) over the eager decoder's outputs."""
    b, k, d = z.shape
    with torch.inference_mode():
        params = tuple(p.reshape(b * k, -1).numpy() for p in model.decode(z.reshape(b * k, d)))
    x_rows = np.repeat(x.reshape(b, -1).numpy().astype(np.float64), k, axis=0)
    return scoring.log_prob_per_feature(x_rows, params, model.config.likelihood).sum(axis=1).reshape(b, k)


def scorer_parity(reference: np.ndarray, exported: np.ndarray, scale: np.ndarray | float = 1.0) -> float:
    """Largest |exported - reference| / max(1, |reference|, scale): see SCORER_PARITY_TOLERANCE. `scale` is the
    size of the terms a difference cancels, where there is one (the ELBO graph's log_ratio)."""
    return float(np.max(np.abs(exported - reference) / np.maximum(np.maximum(1.0, scale), np.abs(reference))))


def reference_elbo_terms(
    mu: np.ndarray, logvar: np.ndarray, eps: np.ndarray, log_px_of: Callable[[np.ndarray], np.ndarray]
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray | float, ...]]:
    """The ELBO graph's outputs by the numpy reference (service/core/scoring.py) from the posterior's mu and logvar
    and ln p(x|z) of the draws (`log_px_of(z)`): each draw's ln p(x|z) and ln p(z) - ln q(z|x), and the KL, in
    model space; and the scale of each for its parity (scorer_parity). ln p(z) - ln q(z|x) =
    1/2 sum(eps^2 - z^2 + ln sigma^2) is a difference of terms of size 1/2 sum(eps^2 + z^2): z's float32 rounding
    (its exp may differ by an ulp between numpy and a runtime) moves it by about that much times float32's
    epsilon, however small the difference itself."""
    z = scoring.reparameterize(mu, logvar, eps)
    terms = (log_px_of(z), scoring.log_prior_ratio(z, eps, logvar), scoring.kl_to_standard_normal(mu, logvar))
    ratio_scale = 0.5 * (np.sum(eps.astype(np.float64) ** 2, axis=2) + np.sum(z.astype(np.float64) ** 2, axis=2))
    return terms, (1.0, ratio_scale, 1.0)


def _parity(model: VAE, staged: Artifact) -> dict[str, dict[str, float]]:
    """Largest |exported - eager| for each runtime and graph on the check batches; for the scorer and the ELBO
    graph, the largest relative difference from the numpy reference."""
    x, z = check_batches(model.config)
    x_draws, z_draws = check_draws(model.config)
    eps = z_draws.numpy()  # as noise: wider than N(0, I), as z was wider than the prior
    with torch.inference_mode():
        eager_encoded, eager_decoded = model.encode(x), model.decode(z)
    reference = reference_log_px(model, x_draws, z_draws)
    with torch.inference_mode():
        mu, logvar = (t.numpy() for t in model.encode(x_draws))
    reference_terms, scales = reference_elbo_terms(
        mu, logvar, eps, lambda z_eps: reference_log_px(model, x_draws, torch.from_numpy(z_eps))
    )
    parity = {}
    for runtime in (OnnxRuntime(staged), TorchScriptRuntime(staged)):
        terms = runtime.elbo_terms(x_draws.numpy(), eps)
        parity[runtime.name] = {
            "encoder": _max_abs_diff(eager_encoded, runtime.encode(x.numpy())),
            "decoder": _max_abs_diff(eager_decoded, runtime.decode(z.numpy())),
            "scorer": scorer_parity(reference, runtime.score(x_draws.numpy(), z_draws.numpy())),
            "elbo": max(scorer_parity(r, t, scale) for r, t, scale in zip(reference_terms, terms, scales, strict=True)),
        }
    return parity


def _graphs(likelihood: str) -> Graphs:
    return Graphs(
        encoder=Graph(onnx="encoder.onnx", torchscript="encoder.pt", inputs=["x"], outputs=["mu", "logvar"]),
        decoder=Graph(onnx="decoder.onnx", torchscript="decoder.pt", inputs=["z"], outputs=DECODER_OUTPUTS[likelihood]),
        scorer=Graph(onnx="scorer.onnx", torchscript="scorer.pt", inputs=SCORER_INPUTS, outputs=SCORER_OUTPUTS),
        elbo=Graph(onnx="elbo.onnx", torchscript="elbo.pt", inputs=ELBO_INPUTS, outputs=ELBO_OUTPUTS),
    )


def _replace_dir(staged: Path, out: Path) -> None:
    """Move the finished directory into place; the old one is removed only after the new one is there."""
    if not out.exists():
        staged.rename(out)
        return
    if not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_NAME).exists()):
        raise ExportError(f"{out}: exists and is not a model directory; refusing to replace it")
    retired = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    out.rename(retired)
    staged.rename(out)
    shutil.rmtree(retired, ignore_errors=True)


def export_model_dir(
    checkpoint: dict, out: str | Path, calibration: CalibrationPlan | None = None, progress: bool = False
) -> Artifact:
    """Write the model directory `out` from a checkpoint. Returns the verified artifact.

    With a calibration plan, the calibration rows are scored through the exported graphs and the result
    is stored in the manifest and the checkpoint; without one, the checkpoint's stored calibration is used
    (the same weights give the same scores).

    Everything is written into a hidden sibling directory, the manifest last, and renamed into place,
    so a crash never leaves a directory that looks complete.
    """
    if calibration is None and "scoring" not in checkpoint:
        raise ExportError("the checkpoint holds no calibration; train again with `vae train`")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = model_from_checkpoint(checkpoint)
    config = model.config
    graphs = _graphs(config.likelihood)
    staged = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    staged.mkdir()
    try:
        x, z = check_batches(config)
        _export_onnx(model.encoder, (x[:2],), staged / graphs.encoder.onnx, graphs.encoder)
        _export_onnx(model.decoder, (z[:2],), staged / graphs.decoder.onnx, graphs.decoder)
        _export_torchscript(model.encoder, staged / graphs.encoder.torchscript)
        _export_torchscript(model.decoder, staged / graphs.decoder.torchscript)
        _export_with_draws(scorer_for(model), staged, graphs.scorer, config)
        _export_with_draws(ElboGraph(model), staged, graphs.elbo, config)
        manifest = _manifest(checkpoint, out.name, graphs, files={})
        if calibration is not None:
            checkpoint = {
                **checkpoint,
                "scoring": calibrate(
                    Artifact(staged, manifest), calibration, progress, exact_posterior=is_ppca(model)
                ).model_dump(),
            }
        torch.save(checkpoint, staged / CHECKPOINT_NAME)
        with (staged / METRICS_NAME).open("w") as f:
            for row in checkpoint["history"]:
                f.write(json.dumps(row) + "\n")
        _write_sample(checkpoint, staged / SAMPLE_NAME)

        files = {p.name: sha256_file(p) for p in sorted(staged.iterdir())}
        manifest = _manifest(checkpoint, out.name, graphs, files).model_copy(
            update={"scoring": Scoring(**checkpoint["scoring"])}
        )
        parity = _parity(model, Artifact(staged, manifest))
        worst = max(v for by_graph in parity.values() for graph, v in by_graph.items() if graph in EAGER_GRAPHS)
        if not worst <= PARITY_TOLERANCE:
            raise ExportError(
                f"exported graphs differ from the eager model by {worst:.3g} > {PARITY_TOLERANCE:g}: {parity}"
            )
        for graph, called in (("scorer", "scorer"), ("elbo", "ELBO")):
            worst = max(by_graph[graph] for by_graph in parity.values())
            if not worst <= SCORER_PARITY_TOLERANCE:
                raise ExportError(
                    f"the exported {called} graph differs from the numpy reference by {worst:.3g} (relative) > "
                    f"{SCORER_PARITY_TOLERANCE:g}: {parity}"
                )
        write_manifest(staged, manifest.model_copy(update={"parity": parity}))
        load_artifact(staged)  # read back through the one loader before anything is replaced
        _replace_dir(staged, out)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
    return load_artifact(out)


def _export_with_draws(module: torch.nn.Module, staged: Path, graph: Graph | None, config: ModelConfig) -> None:
    """A graph taking x (B, *input_shape) and draws (B, S, d), the scorer's z or the ELBO graph's eps, in both
    formats; its batch and draws axes are dynamic."""
    assert graph is not None
    x, draws_example = check_draws(config)
    batch, draws = torch.export.Dim("batch"), torch.export.Dim("draws")
    x_name, draws_name = graph.inputs
    dynamic = {x_name: {0: batch}, draws_name: {0: batch, 1: draws}}
    _export_onnx(module.eval(), (x[:2], draws_example[:2, :3]), staged / graph.onnx, graph, dynamic)
    _export_torchscript(module, staged / graph.torchscript)


def _write_sample(checkpoint: dict, path: Path) -> None:
    sample = checkpoint.get("validation_sample") or {"x": torch.zeros(0), "y": None}
    arrays = {"x": sample["x"].numpy()}
    if sample["y"] is not None:
        arrays["y"] = np.asarray(sample["y"])
    np.savez_compressed(path, **arrays)


def _manifest(checkpoint: dict, name: str, graphs: Graphs, files: dict[str, str]) -> Manifest:
    """The manifest without parity and scoring, which are filled in once they are measured."""
    config = ModelConfig(**checkpoint["model_config"])
    return Manifest(
        format_version=FORMAT_VERSION,
        name=name,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        architecture=config.architecture,
        input_shape=config.input_shape,
        latent_dim=config.latent_dim,
        likelihood=config.likelihood,
        preprocessing=Preprocessing(**checkpoint["preprocessing"]),
        graphs=graphs,
        files=files,
        training=TrainingSummary(**checkpoint["training"]),
        parity={},
        image=checkpoint.get("image"),
        feature_names=checkpoint.get("feature_names"),
    )
