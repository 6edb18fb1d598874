"""Runtimes that run the exported networks: ONNX Runtime, or TorchScript (imports torch lazily).

Both take and return float32 numpy arrays in model space, so everything above them is shared:
  encode(x (B, *input_shape)) -> (mu, logvar), each (B, d)
  decode(z (B, d)) -> params, each (B, *input_shape): (logits,) or (mean, logvar)
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from service.core.artifact import Artifact
from service.core.errors import ArtifactError


class Runtime(Protocol):
    name: str

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def decode(self, z: np.ndarray) -> tuple[np.ndarray, ...]: ...


class _TwoGraphs:
    """encode and decode in terms of one `_run(graph, value)` per runtime."""

    def _run(self, graph: str, value: np.ndarray) -> tuple[np.ndarray, ...]:
        raise NotImplementedError

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu, logvar = self._run("encoder", x)
        return mu, logvar

    def decode(self, z: np.ndarray) -> tuple[np.ndarray, ...]:
        return self._run("decoder", z)


class OnnxRuntime(_TwoGraphs):
    name = "onnx"

    def __init__(
        self, artifact: Artifact, intra_op_threads: int = 0, inter_op_threads: int = 0, spinning: bool = False
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        # Spinning threads keep a core busy after every call; with several workers that steals the
        # cores the other processes need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
        self._sessions = {}
        for graph in ("encoder", "decoder"):
            path = artifact.path(graph, "onnx")
            try:
                self._sessions[graph] = ort.InferenceSession(
                    str(path), sess_options=options, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
                raise ArtifactError(f"{path} cannot be loaded by ONNX Runtime: {exc}") from None
        self._outputs = {
            "encoder": artifact.manifest.graphs.encoder.outputs,
            "decoder": artifact.manifest.graphs.decoder.outputs,
        }
        self._inputs = {
            "encoder": artifact.manifest.graphs.encoder.inputs[0],
            "decoder": artifact.manifest.graphs.decoder.inputs[0],
        }

    def _run(self, graph: str, value: np.ndarray) -> tuple[np.ndarray, ...]:
        feed = {self._inputs[graph]: np.ascontiguousarray(value, dtype=np.float32)}
        return tuple(self._sessions[graph].run(self._outputs[graph], feed))


class TorchScriptRuntime(_TwoGraphs):
    name = "torchscript"

    def __init__(self, artifact: Artifact, threads: int = 0) -> None:
        import torch  # only this runtime needs torch

        if threads > 0:
            torch.set_num_threads(threads)
        self._torch = torch
        self._modules = {}
        for graph in ("encoder", "decoder"):
            path = artifact.path(graph, "torchscript")
            try:
                self._modules[graph] = torch.jit.load(  # type: ignore[no-untyped-call]  # torch.jit.load is unannotated
                    str(path), map_location="cpu"
                ).eval()
            except Exception as exc:  # torch.jit raises RuntimeError subclasses with long texts
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ArtifactError(f"{path} cannot be loaded by TorchScript: {first_line}") from None

    def _run(self, graph: str, value: np.ndarray) -> tuple[np.ndarray, ...]:
        with self._torch.inference_mode():
            out = self._modules[graph](self._torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)))
        return tuple(t.numpy() for t in out)


def load_runtime(artifact: Artifact, runtime: str, threads: int = 0, spinning: bool = False) -> Runtime:
    """The one place a runtime is chosen and built."""
    if runtime == "onnx":
        return OnnxRuntime(artifact, intra_op_threads=threads, inter_op_threads=1, spinning=spinning)
    if runtime == "torchscript":
        return TorchScriptRuntime(artifact, threads=threads)
    raise ValueError(f"unknown runtime {runtime!r}; expected 'onnx' or 'torchscript'")
