"""Runtimes that run the exported networks: ONNX Runtime, or TorchScript (imports torch lazily).

Both take and return float32 numpy arrays in model space, so everything above them is shared:
  encode(x (B, *input_shape)) -> (mu, logvar), each (B, d)
  decode(z (B, d)) -> params, each (B, *input_shape): (logits,) or (mean, logvar)
  score(x (B, *input_shape), z (B, K, d)) -> ln p(x|z_k) (B, K) float64, when the model has a scorer graph
  elbo_terms(x, eps (B, S, d)) -> (ln p(x|z) (B, S), ln p(z) - ln q(z|x) (B, S), kl (B,)), float64 in model
      space, when the model has an ELBO graph (training/scorer.py ElboGraph)
"""

from __future__ import annotations

import os
import threading
from typing import Any, Protocol

import numpy as np

from service.core import scoring
from service.core.artifact import Artifact, GraphName, check_runtime
from service.core.errors import ArtifactError

# Calls of fewer rows than this run on one thread (OnnxRuntime): where two threads began to pay on the digits MLP.
SERIAL_ROWS = 128
# Rows of work per call (draws, for the ELBO and scorer graphs) when a runtime has one thread (OnnxRuntime.call_rows).
ONE_THREAD_CALL_ROWS = 1024


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity where the system has one (a container's cpuset limits
    it), else every core; at least 1."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


class Runtime(Protocol):
    name: str
    has_scorer: bool  # the model directory has a scorer graph, so `score` can be called
    has_elbo: bool  # the model directory has an ELBO graph, so `elbo_terms` can be called
    call_rows: int  # rows of work (draws) per call of the scorer or the ELBO graph: the engine cuts larger batches

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def decode(self, z: np.ndarray) -> tuple[np.ndarray, ...]: ...

    def score(self, x: np.ndarray, z: np.ndarray) -> np.ndarray: ...

    def elbo_terms(self, x: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def graph_names(artifact: Artifact) -> tuple[GraphName, ...]:
    """The graphs a runtime loads: encoder and decoder, and the scorer and the ELBO graph when the model has them."""
    graphs = artifact.manifest.graphs
    optional: tuple[GraphName, ...] = ("scorer", "elbo")
    return ("encoder", "decoder", *(name for name in optional if getattr(graphs, name) is not None))


class _Graphs:
    """encode, decode, score and elbo_terms in terms of one `_run(graph, *values)` per runtime."""

    has_scorer = False
    has_elbo = False
    call_rows = scoring.DECODE_CHUNK_ROWS

    def _graph_names(self, artifact: Artifact) -> tuple[GraphName, ...]:
        """The graphs to load: encoder and decoder, and the scorer and the ELBO graph when the model has them (then
        `score` and `elbo_terms` work)."""
        graphs = graph_names(artifact)
        self.has_scorer, self.has_elbo = "scorer" in graphs, "elbo" in graphs
        return graphs

    def _run(self, graph: GraphName, *values: np.ndarray) -> tuple[np.ndarray, ...]:
        raise NotImplementedError

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, logvar = self._run("encoder", x)
        return mu, logvar

    def decode(self, z: np.ndarray) -> tuple[np.ndarray, ...]:
        return self._run("decoder", z)

    def score(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        if not self.has_scorer:
            raise RuntimeError("this model directory has no scorer graph")
        (log_px,) = self._run("scorer", x, z)
        return log_px

    def elbo_terms(self, x: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.has_elbo:
            raise RuntimeError("this model directory has no ELBO graph")
        log_px, log_ratio, kl = self._run("elbo", x, eps)
        return log_px, log_ratio, kl


class OnnxRuntime(_Graphs):
    """The graphs in ONNX Runtime sessions. With more than one intra-op thread and `serial_rows` > 0, each graph
    also gets a one-thread session for calls of fewer than `serial_rows` rows (draws counted, for the scorer).

    Why two: ONNX Runtime's thread pool, not spinning, wakes its other threads for every operator, and on
    small batches that costs more than it saves: on the digits MLP, encoder + scorer took 18.9 µs for one row
    on one thread and 24.9 µs on two; 44 and 60 µs for 16 rows; 453 and 395 µs for 256 rows; 3.8 and 2.4 ms
    for 2,048 (docs/benchmark-serving.md). Served requests are mostly small batches, while the event loop needs
    a core of its own; large batches still get every thread. The two sessions give the same numbers (the graphs'
    kernels do not split a reduction across threads; tested).

    With one thread its calls are cut smaller (call_rows: 1,024 draws; the ELBO graph takes whole rows of
    draws, so a row of more draws still goes whole): a call's intermediate tensors then stay in the core's cache.
    On the digits MLP, 1,024 draws per call of the ELBO graph against 8,192 ran 9% faster at two draws per row
    and 18% faster at 101; with two threads the large calls were faster (docs/benchmark-serving.md, Bulk
    scoring). The numbers are the same whatever the cut (each row's draws are computed alone; tested).

    With `lazy`, each session is made when a call first needs it (`vae score` and Spark: a file scored through
    the ELBO graph never uses the other graphs' sessions, up to seven of eight, which took 0.12 of 0.15 s to
    make on a 784-1024-512 MLP), from the file's bytes checked against the manifest as they are read
    (Artifact.read_verified): a new export may have replaced the directory since it was loaded. The service
    makes them all before it is ready, so no request waits for one.
    """

    name = "onnx"

    def __init__(
        self,
        artifact: Artifact,
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        spinning: bool = False,
        serial_rows: int = 0,
        lazy: bool = False,
    ) -> None:
        graphs = self._graph_names(artifact)
        one_thread = (intra_op_threads or available_cores()) == 1  # 0: ONNX Runtime's default, every core
        self._serial_rows = serial_rows if not one_thread else 0
        self.call_rows = ONE_THREAD_CALL_ROWS if one_thread else scoring.DECODE_CHUNK_ROWS
        self._artifact, self._spinning, self._lazy = artifact, spinning, lazy
        self._threads = {False: (intra_op_threads, inter_op_threads), True: (1, 1)}  # keyed by "serial"
        self._sessions: dict[GraphName, Any] = {}
        self._serial_sessions: dict[GraphName, Any] = {}
        self._making = threading.Lock()  # a lazy session is made once, whichever thread needs it first
        if not lazy:
            for graph in graphs:
                self._session_of(graph, serial=False)
                if self._serial_rows:
                    self._session_of(graph, serial=True)
        specs = {graph: getattr(artifact.manifest.graphs, graph) for graph in graphs}
        self._outputs = {graph: spec.outputs for graph, spec in specs.items()}
        self._inputs = {graph: spec.inputs for graph, spec in specs.items()}

    def _session_of(self, graph: GraphName, serial: bool) -> Any:
        sessions = self._serial_sessions if serial else self._sessions
        session = sessions.get(graph)
        if session is None:
            with self._making:
                session = sessions.get(graph)
                if session is None:
                    threads = self._threads[serial]
                    session = _session(self._artifact, graph, *threads, self._spinning, verified_now=self._lazy)
                    sessions[graph] = session
        return session

    def _run(self, graph: GraphName, *values: np.ndarray) -> tuple[np.ndarray, ...]:
        feed = {
            name: np.ascontiguousarray(value, dtype=np.float32)
            for name, value in zip(self._inputs[graph], values, strict=True)
        }
        session = self._session_of(graph, serial=_rows_of_work(graph, values) < self._serial_rows)
        return tuple(session.run(self._outputs[graph], feed))


def _rows_of_work(graph: GraphName, values: tuple[np.ndarray, ...]) -> int:
    """The rows a call decodes: the batch, times the draws for the scorer (z is (B, K, d)) and the ELBO graph
    (eps is (B, S, d))."""
    if graph in ("scorer", "elbo"):
        return int(values[1].shape[0] * values[1].shape[1])
    return int(values[0].shape[0])


def _session(
    artifact: Artifact,
    graph: GraphName,
    intra_op_threads: int,
    inter_op_threads: int,
    spinning: bool,
    verified_now: bool = False,
) -> Any:  # an onnxruntime.InferenceSession; onnxruntime is imported only when a runtime is built
    """The graph's session; with `verified_now`, made from its bytes as read and checked (Artifact.read_verified),
    else from the file that load_artifact checked."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    # Spinning threads keep a core busy after every call; with several workers that steals the
    # cores the other processes need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
    path = artifact.path(graph, "onnx")
    model = artifact.read_verified(graph, "onnx") if verified_now else str(path)
    try:
        return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        raise ArtifactError(f"{path} cannot be loaded by ONNX Runtime: {exc}") from None


class TorchScriptRuntime(_Graphs):
    name = "torchscript"

    def __init__(self, artifact: Artifact, threads: int = 0) -> None:
        import torch  # only this runtime needs torch

        if threads > 0:
            torch.set_num_threads(threads)
        self._torch = torch
        self._modules = {}
        graphs = self._graph_names(artifact)
        for graph in graphs:
            path = artifact.path(graph, "torchscript")
            try:
                self._modules[graph] = torch.jit.load(  # type: ignore[no-untyped-call]  # torch.jit.load is unannotated
                    str(path), map_location="cpu"
                ).eval()
            except Exception as exc:  # torch.jit raises RuntimeError subclasses with long texts
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ArtifactError(f"{path} cannot be loaded by TorchScript: {first_line}") from None

    def _run(self, graph: GraphName, *values: np.ndarray) -> tuple[np.ndarray, ...]:
        tensors = [self._torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for v in values]
        with self._torch.inference_mode():
            out = self._modules[graph](*tensors)
        # The encoder and decoder return tuples; the scorer returns one tensor.
        return (out.numpy(),) if isinstance(out, self._torch.Tensor) else tuple(t.numpy() for t in out)


def load_runtime(
    artifact: Artifact, runtime: str, threads: int = 0, spinning: bool = False, lazy: bool = False
) -> Runtime:
    """The one place a runtime is chosen and built. `lazy`: ONNX Runtime sessions made at first use (OnnxRuntime)."""
    if runtime == "onnx":
        return OnnxRuntime(
            artifact,
            intra_op_threads=threads,
            inter_op_threads=1,
            spinning=spinning,
            serial_rows=SERIAL_ROWS,
            lazy=lazy,
        )
    check_runtime(runtime)
    return TorchScriptRuntime(artifact, threads=threads)
