"""Typed service settings from VAE_* environment variables; bad values stop start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.core.engine import Limits
from service.core.runtime import available_cores


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VAE_", protected_namespaces=(), extra="ignore")

    model_dir: Path = Field(description="the model directory written by `vae train` or `vae export`")
    runtime: Literal["onnx", "torchscript"] = Field("onnx", description="onnx never imports torch")
    host: str = Field("127.0.0.1", description="address `vae serve` binds")
    port: int = Field(8000, ge=0, le=65535, description="port `vae serve` binds; 0 picks a free one")
    workers: int = Field(1, ge=1, description="`vae serve` processes")
    grpc_port: int | None = Field(
        None, ge=0, le=65535, description="port of the OIP v2 gRPC service on VAE_HOST; unset: no gRPC; 0: a free one"
    )
    threads: int = Field(0, ge=0, description="runtime intra-op threads per worker; 0: cores / workers")
    max_instances: int = Field(4096, ge=1, description="instances (or latent vectors) per request")
    max_samples: int = Field(10_000, ge=1, description="n_samples per request")
    max_iw_samples: int = Field(10_000, ge=1, description="iw_samples (K) per request")
    max_draws: int = Field(1_000_000, ge=1, description="instances x (n_samples + iw_samples) per request")
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest request body; more gets 413")
    max_response_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="largest answer, computed before any work; more gets 413"
    )
    request_timeout_s: float = Field(30.0, gt=0, description="a request still running after this gets 503")
    drain_delay_s: float = Field(0.0, ge=0, description="after SIGTERM, answer /readyz 503 this long before draining")
    onnx_spinning: bool = Field(False, description="let ONNX Runtime's idle threads spin (burns CPU between calls)")
    threshold: float | None = Field(None, allow_inf_nan=False, description="replaces the calibrated threshold")
    batching: bool = Field(True, description="combine concurrent requests into one runtime call")
    max_batch_size: int = Field(256, ge=1, description="instances per combined runtime call")
    fast_path: bool = Field(
        True, description="answer JSON POSTs to /elbo, /encode and /decode in a lean ASGI layer before FastAPI"
    )
    max_batch_delay_ms: float = Field(0.0, ge=0, description="extra wait for more requests; 0 adds no delay")
    api_key: SecretStr | None = Field(None, description="require `Authorization: Bearer <key>` on all but health")
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list, description="comma-separated origins")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    # uvicorn's own limits, set by `vae serve`. uvicorn has no timeout on reading headers or bodies: a
    # server open to untrusted clients belongs behind the compose proxy (nginx), which has them.
    keep_alive_s: float = Field(5.0, gt=0, description="an idle keep-alive connection is closed after this")
    limit_concurrency: int = Field(
        1024, ge=1, description="connections and requests at once per worker; more get 503 at once"
    )
    backlog: int = Field(2048, ge=1, description="connections the kernel queues before they are accepted")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value

    @field_validator("grpc_port", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        return None if value == "" else value  # VAE_GRPC_PORT= turns off the port the serve image sets

    @property
    def limits(self) -> Limits:
        return Limits(
            self.max_instances, self.max_samples, self.max_iw_samples, self.max_draws, self.max_response_bytes
        )

    @property
    def runtime_threads(self) -> int:
        """Threads per worker so that workers x threads never exceeds the cores this process may run on (its CPU
        affinity: a container's cpuset, `taskset`), not the host's."""
        return self.threads or max(1, available_cores() // self.workers)


def describe_settings_error(exc) -> str:
    """One line for a pydantic ValidationError raised by Settings(): the variable and the problem."""
    first = exc.errors()[0]
    name = "VAE_" + "_".join(str(p) for p in first["loc"]).upper()
    return f"invalid setting {name}: {first['msg']} (got {first.get('input')!r})"
