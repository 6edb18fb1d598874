"""OnnxRuntime's two sessions per graph: calls of few rows on one thread, larger ones on every thread."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.core.artifact import load_artifact
from service.core.runtime import SERIAL_ROWS, OnnxRuntime, load_runtime
from tests.helpers import change_after_export


class Counting:
    """A session stand-in that counts its calls and passes them on."""

    def __init__(self, session) -> None:
        self.session = session
        self.calls = 0

    def run(self, *args, **kwargs):
        self.calls += 1
        return self.session.run(*args, **kwargs)


def counted(runtime: OnnxRuntime) -> tuple[dict, dict]:
    runtime._sessions = {g: Counting(s) for g, s in runtime._sessions.items()}
    runtime._serial_sessions = {g: Counting(s) for g, s in runtime._serial_sessions.items()}
    return runtime._serial_sessions, runtime._sessions


@pytest.fixture(scope="module")
def artifact(model_dirs):
    return load_artifact(model_dirs["digits"])


def test_calls_below_serial_rows_take_the_one_thread_session(artifact):
    runtime = OnnxRuntime(artifact, intra_op_threads=2, serial_rows=8)
    serial, parallel = counted(runtime)
    d, shape = artifact.manifest.latent_dim, artifact.manifest.input_shape
    rng = np.random.default_rng(0)
    x7, x8 = rng.random((7, *shape), dtype=np.float32), rng.random((8, *shape), dtype=np.float32)
    runtime.encode(x7)
    assert (serial["encoder"].calls, parallel["encoder"].calls) == (1, 0)
    runtime.encode(x8)
    assert (serial["encoder"].calls, parallel["encoder"].calls) == (1, 1)
    runtime.decode(rng.standard_normal((7, d), dtype=np.float32))
    assert (serial["decoder"].calls, parallel["decoder"].calls) == (1, 0)
    # The scorer's rows are draws: 1 input x 7 draws stays on one thread, 2 x 4 does not.
    runtime.score(x7[:1], rng.standard_normal((1, 7, d), dtype=np.float32))
    assert (serial["scorer"].calls, parallel["scorer"].calls) == (1, 0)
    runtime.score(x7[:2], rng.standard_normal((2, 4, d), dtype=np.float32))
    assert (serial["scorer"].calls, parallel["scorer"].calls) == (1, 1)


def test_the_one_thread_session_gives_the_numbers_of_a_one_thread_runtime(artifact):
    two = OnnxRuntime(artifact, intra_op_threads=2, serial_rows=SERIAL_ROWS)
    one = OnnxRuntime(artifact, intra_op_threads=1)
    d, shape = artifact.manifest.latent_dim, artifact.manifest.input_shape
    rng = np.random.default_rng(1)
    for rows in (1, 5, SERIAL_ROWS - 1):
        x = rng.random((rows, *shape), dtype=np.float32)
        z = rng.standard_normal((rows, 1, d), dtype=np.float32)
        for got, want in zip(two.encode(x), one.encode(x), strict=True):
            assert np.array_equal(got, want)
        assert np.array_equal(two.score(x, z), one.score(x, z))
    # Above serial_rows every thread works, to float32 rounding of the same numbers.
    x = rng.random((4 * SERIAL_ROWS, *shape), dtype=np.float32)
    for got, want in zip(two.encode(x), one.encode(x), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_one_thread_runtimes_keep_one_session_per_graph(artifact):
    assert OnnxRuntime(artifact, intra_op_threads=1, serial_rows=SERIAL_ROWS)._serial_sessions == {}
    assert OnnxRuntime(artifact, intra_op_threads=2)._serial_sessions == {}  # serial_rows 0: one session
    served = load_runtime(artifact, "onnx", threads=2)
    assert isinstance(served, OnnxRuntime) and set(served._serial_sessions) == set(served._sessions)
    assert load_runtime(artifact, "onnx", threads=1)._serial_sessions == {}  # type: ignore[attr-defined]


def test_a_lazy_runtime_makes_each_session_at_its_first_call_and_gives_the_same_numbers(artifact, monkeypatch):
    from service.core import runtime as runtime_module

    made = []
    make = runtime_module._session

    def counting(artifact, graph, intra, inter, spinning, verified_now=False):
        made.append((graph, intra, verified_now))
        return make(artifact, graph, intra, inter, spinning, verified_now)

    monkeypatch.setattr(runtime_module, "_session", counting)
    lazy = load_runtime(artifact, "onnx", threads=2, lazy=True)
    eager_made = len(made)
    eager = load_runtime(artifact, "onnx", threads=2)
    assert eager_made == 0 and len(made) == 8  # four graphs, each with its one-thread session
    assert not any(verified for *_, verified in made)  # checked by load_artifact just before
    made.clear()
    d, shape = artifact.manifest.latent_dim, artifact.manifest.input_shape
    rng = np.random.default_rng(2)
    x, eps = rng.random((3, *shape), dtype=np.float32), rng.standard_normal((3, 2, d), dtype=np.float32)
    for got, want in zip(lazy.elbo_terms(x, eps), eager.elbo_terms(x, eps), strict=True):
        assert np.array_equal(got, want)
    assert made == [("elbo", 1, True)]  # 6 draws: the one-thread session, from bytes checked as read
    big = rng.random((SERIAL_ROWS, *shape), dtype=np.float32)
    for got, want in zip(lazy.encode(big), eager.encode(big), strict=True):
        assert np.array_equal(got, want)
    lazy.elbo_terms(x, eps)
    assert made == [("elbo", 1, True), ("encoder", 2, True)]


def test_threads_that_first_need_a_lazy_session_at_once_make_it_once(artifact, monkeypatch):
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from service.core import runtime as runtime_module

    made, make, both_in = [], runtime_module._session, threading.Barrier(2)

    def slow(*args, **kwargs):  # long enough that the other thread asks for the session while this one makes it
        made.append(args[1])
        time.sleep(0.2)
        return make(*args, **kwargs)

    monkeypatch.setattr(runtime_module, "_session", slow)
    lazy = load_runtime(artifact, "onnx", threads=1, lazy=True)
    x = np.zeros((2, *artifact.manifest.input_shape), dtype=np.float32)

    def call(_):
        both_in.wait()
        return lazy.encode(x)

    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(call, range(2))
    assert made == ["encoder"]
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_a_lazy_session_refuses_a_graph_that_changed_since_the_directory_was_loaded(model_dirs, tmp_path):
    """A new export may replace the directory during a long `vae score`: a session made then is checked first."""
    import shutil

    from service.core.errors import ArtifactError

    copy = Path(shutil.copytree(model_dirs["digits"], tmp_path / "copy"))
    lazy = load_runtime(load_artifact(copy, runtime="onnx"), "onnx", threads=1, lazy=True)
    change_after_export(copy / "encoder.onnx")
    x = np.zeros((2, 1, 8, 8), dtype=np.float32)
    with pytest.raises(ArtifactError) as err:
        lazy.encode(x)
    assert str(err.value).startswith(f"{copy / 'encoder.onnx'} fails its sha256 check (manifest ")
    (copy / "decoder.onnx").unlink()
    with pytest.raises(ArtifactError) as err:
        lazy.decode(np.zeros((2, 4), dtype=np.float32))
    assert str(err.value) == (
        f"{copy / 'decoder.onnx'} cannot be read (No such file or directory): the model directory changed"
    )
