"""A client of the native HTTP API, installable on its own (httpx, numpy and orjson only): `pip install ./client`."""

from vae_client.client import (
    AsyncVaeClient,
    ElboResult,
    Encoded,
    Heatmap,
    Images,
    Sampled,
    VaeClient,
    VaeClientError,
    VaeConnectionError,
    VaeHTTPError,
    VaeInputError,
    VaeModelChanged,
)

__all__ = [
    "AsyncVaeClient",
    "ElboResult",
    "Encoded",
    "Heatmap",
    "Images",
    "Sampled",
    "VaeClient",
    "VaeClientError",
    "VaeConnectionError",
    "VaeHTTPError",
    "VaeInputError",
    "VaeModelChanged",
]
