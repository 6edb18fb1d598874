"""Typed service settings from VAE_* environment variables; bad values stop start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.engine import Limits


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VAE_", protected_namespaces=(), extra="ignore")

    model_dir: Path = Field(description="the model directory written by `vae train` or `vae export`")
    runtime: Literal["onnx", "torchscript"] = Field("onnx", description="onnx never imports torch")
    host: str = Field("127.0.0.1", description="address `vae serve` binds")
    port: int = Field(8000, ge=0, le=65535, description="port `vae serve` binds; 0 picks a free one")
    threads: int = Field(0, ge=0, description="runtime intra-op threads; 0 lets the runtime choose")
    max_instances: int = Field(4096, ge=1, description="instances (or latent vectors) per request")
    max_samples: int = Field(10_000, ge=1, description="n_samples per request")
    max_iw_samples: int = Field(10_000, ge=1, description="iw_samples (K) per request")
    max_draws: int = Field(1_000_000, ge=1, description="instances x (n_samples + iw_samples) per request")
    threshold: float | None = Field(None, allow_inf_nan=False, description="replaces the calibrated threshold")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="uvicorn log level")

    @property
    def limits(self) -> Limits:
        return Limits(self.max_instances, self.max_samples, self.max_iw_samples, self.max_draws)


def describe_settings_error(exc) -> str:
    """One line for a pydantic ValidationError raised by Settings(): the variable and the problem."""
    first = exc.errors()[0]
    name = "VAE_" + "_".join(str(p) for p in first["loc"]).upper()
    return f"invalid setting {name}: {first['msg']} (got {first.get('input')!r})"
