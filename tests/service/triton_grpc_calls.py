"""tritonclient.grpc's calls against a running server, printed as JSON: run by tests/service/test_grpc.py in a
process of its own, because tritonclient.grpc and kserve each register the `inference.*` protobuf messages
under a different file, which one process refuses ("duplicate symbol 'inference.ServerLiveRequest'"), and
tests/service/test_real_clients.py imports kserve in the pytest process.

    python tests/service/triton_grpc_calls.py ADDRESS sync|aio [API_KEY]

Floats are printed by json (shortest round-trip repr), so the numbers arrive exactly.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpc_aio
from sklearn.datasets import load_digits
from tritonclient.utils import InferenceServerException

ELBO_OUTPUTS = ["elbo", "reconstruction", "kl", "log_likelihood", "anomaly_score", "is_anomaly", "p_value"]


async def done(result: Any) -> Any:
    """The sync client returns values and the aio client awaitables: one scenario serves both."""
    return await result if inspect.isawaitable(result) else result


def tensor(name: str, array: np.ndarray, datatype: str = "FP64") -> grpcclient.InferInput:
    given = grpcclient.InferInput(name, list(array.shape), datatype)
    given.set_data_from_numpy(array.astype(np.float64 if datatype == "FP64" else np.float32))
    return given


def outputs(result, names: list[str]) -> dict[str, list]:
    return {name: result.as_numpy(name).tolist() for name in names}


async def error(call) -> dict:
    try:
        await done(call())
    except InferenceServerException as exc:
        return {"status": exc.status(), "message": exc.message()}
    return {"status": "OK"}


async def scenarios(client, headers: dict | None) -> dict:
    digits = load_digits().data[:3].reshape(3, 1, 8, 8)
    infer = lambda *args, **kwargs: client.infer(*args, headers=headers, **kwargs)  # noqa: E731
    got: dict[str, Any] = {
        "live": await done(client.is_server_live()),
        "ready": await done(client.is_server_ready()),
        "model_ready": [
            await done(client.is_model_ready(name, version, headers=headers))
            for name, version in (("digits-elbo", ""), ("digits-elbo", "1"), ("digits-elbo", "2"), ("digits-x", ""))
        ],
        "server_metadata": await done(client.get_server_metadata(headers=headers, as_json=True)),
        "model_metadata": await done(client.get_model_metadata("digits-elbo", "1", headers=headers, as_json=True)),
    }
    elbo = await done(infer("digits-elbo", [tensor("instances", digits)], parameters={"seed": 3, "n_samples": 4}))
    got["elbo"] = outputs(elbo, ELBO_OUTPUTS)
    got["elbo_response"] = elbo.get_response(as_json=True)
    fp32 = await done(infer("digits-elbo", [tensor("instances", digits, "FP32")], parameters={"seed": 3, "fpr": 0.25}))
    got["elbo_fp32_fpr"] = outputs(fp32, ["anomaly_score", "is_anomaly"])
    encoded = await done(
        infer(
            "digits-encode",
            [tensor("instances", digits.reshape(3, 64))],
            model_version="1",
            request_id="42",
            sequence_id=7,
            sequence_start=True,
            sequence_end=True,
            priority=1,
            timeout=60_000_000,
        )
    )
    got["encode"] = outputs(encoded, ["mu", "logvar", "sigma"])
    got["encode_id"] = encoded.get_response().id
    z = np.linspace(-1, 1, 8).reshape(2, 4)
    got["decode"] = outputs(await done(infer("digits-decode", [tensor("z", z)])), ["x"])
    sampled = await done(infer("digits-sample", [], parameters={"n_samples": 3, "seed": 7, "decode": True}))
    got["sample"] = outputs(sampled, ["z", "x"])
    got["errors"] = {
        "unknown_model": await error(lambda: infer("digits-heatmap", [tensor("instances", digits)])),
        "bad_shape": await error(lambda: infer("digits-elbo", [tensor("instances", np.zeros((3, 5)))])),
        "bad_parameter": await error(
            lambda: infer("digits-elbo", [tensor("instances", digits)], parameters={"fpr": 2.0})
        ),
        "unknown_parameter": await error(
            lambda: infer("digits-elbo", [tensor("instances", digits)], parameters={"n_sample": 2})
        ),
        "unknown_version": await error(
            lambda: infer("digits-encode", [tensor("instances", digits)], model_version="2")
        ),
    }
    return got


async def main(address: str, mode: str, key: str | None) -> dict:
    headers = {"authorization": f"Bearer {key}"} if key else None
    if mode == "aio":
        client = grpc_aio.InferenceServerClient(address)
        try:
            return await scenarios(client, headers)
        finally:
            await client.close()
    client = grpcclient.InferenceServerClient(address)
    try:
        return await scenarios(client, headers)
    finally:
        client.close()


if __name__ == "__main__":
    address, mode, *rest = sys.argv[1:]
    print(json.dumps(asyncio.run(main(address, mode, rest[0] if rest else None))))
