# TEMPORARY placeholder until the full loader lands; replaced by helper's version.
from __future__ import annotations
from dataclasses import dataclass
import numpy as np

MIN_ROWS = 10

class DataError(ValueError):
    pass

@dataclass(frozen=True)
class Dataset:
    x: np.ndarray
    y: np.ndarray | None
    source: str
    kind: str
    @property
    def input_shape(self): return tuple(self.x.shape[1:])
    @property
    def default_likelihood(self): return "bernoulli" if self.kind == "digits" else "gaussian"

def load_dataset(source, *, label_column=None):
    if source == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        return Dataset(d.data.reshape(-1, 1, 8, 8).astype(np.float32), d.target, "digits", "digits")
    if source.endswith(".csv"):
        try:
            x = np.loadtxt(source, delimiter=",", skiprows=1)
        except OSError as e:
            raise DataError(f"{source}: {e}")
        return Dataset(x.astype(np.float32), None, source, "tabular")
    raise DataError(f"{source}: unsupported")

def fit_preprocessing(x, likelihood):
    if likelihood == "bernoulli":
        lo, hi = float(x.min()), float(x.max())
        return lo, (hi - lo) or 1.0
    flat = x.reshape(len(x), -1).astype(np.float64)
    mean, std = flat.mean(0), flat.std(0)
    std = np.where(std < 1e-12 * np.maximum(1, np.abs(mean)), 1.0, std)
    return mean.tolist(), std.tolist()
