"""A client of the v2 routes built from MLServer's own codecs and types, run by tests/service/test_mlserver_codecs.py
with the python of .venv-mlserver (scripts/mlserver_setup.sh): mlserver needs fastapi<0.116, so it cannot be
imported beside the service. It never imports the service or the tests.

    mlserver_client.py BASE_URL < job.json > answers.json

The job gives the model's name, `instances` (nested, raw units) and the elbo request's `parameters`. The
answers are JSON: for each case, the HTTP status and what MLServer's codecs decoded from the body, as lists.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
from mlserver.codecs import NumpyCodec, NumpyRequestCodec, PandasCodec
from mlserver.types import InferenceErrorResponse, InferenceRequest, InferenceResponse, Parameters


def post(base: str, model: str, request: InferenceRequest) -> tuple[int, bytes]:
    """POST the request as MLServer's own client does (its model_dump_json, Content-Type application/json)."""
    http = urllib.request.Request(
        f"{base}/v2/models/{model}/infer",
        data=request.model_dump_json().encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(http, timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read()


def decoded(status: int, body: bytes) -> dict:
    """An answer as the test reads it: each output through NumpyCodec.decode_output, or the parsed error."""
    if status != 200:
        return {"status": status, "error": InferenceErrorResponse.model_validate_json(body).error}
    response = InferenceResponse.model_validate_json(body)
    outputs = {out.name: NumpyCodec.decode_output(out) for out in response.outputs}
    return {
        "status": status,
        "model_name": response.model_name,
        "parameters": response.parameters.model_dump() if response.parameters else {},
        "outputs": {name: array.tolist() for name, array in outputs.items()},
        "dtypes": {name: str(array.dtype) for name, array in outputs.items()},
        "table": PandasCodec.decode_response(response).to_dict("list") if model_has_rows(response) else None,
    }


def model_has_rows(response: InferenceResponse) -> bool:
    """PandasCodec reads every output as one column: only answers whose outputs are all (B,) are a table."""
    return all(len(out.shape) == 1 for out in response.outputs)


def main() -> None:
    base = sys.argv[1]
    job = json.load(sys.stdin)
    name, x, parameters = job["model"], np.asarray(job["instances"], dtype=np.float64), job["parameters"]
    answers = {}

    # Request level: the whole request is one numpy tensor ("np"); the codec names it input-1, the model calls it
    # instances. The elbo options travel as request parameters beside the codec's content_type.
    request = NumpyRequestCodec.encode_request(x)
    request.inputs[0].name = "instances"
    request.parameters = Parameters(content_type=NumpyRequestCodec.ContentType, **parameters)
    answers["elbo_np_request"] = decoded(*post(base, f"{name}-elbo", request))

    # Input level: one tensor with its own content_type "np", and no request parameters.
    request = InferenceRequest(inputs=[NumpyCodec.encode_input("instances", x)])
    answers["encode_np_input"] = decoded(*post(base, f"{name}-encode", request))

    # A pandas table ("pd"): one column per feature, as MLServer users send tabular rows. The v2 models take one
    # tensor of instances, so the server refuses it (docs/oip-v2.md).
    table = pd.DataFrame(x.reshape(len(x), -1), columns=[f"x{i}" for i in range(x[0].size)])
    answers["elbo_pd_request"] = decoded(*post(base, f"{name}-elbo", PandasCodec.encode_request(table)))

    request = InferenceRequest(inputs=[NumpyCodec.encode_input("instances", x)])
    answers["unknown_model"] = decoded(*post(base, f"{name}-heatmap", request))
    request = InferenceRequest(inputs=[NumpyCodec.encode_input("instances", x.reshape(len(x), -1)[:, :-1])])
    answers["bad_shape"] = decoded(*post(base, f"{name}-elbo", request))
    json.dump(answers, sys.stdout)


if __name__ == "__main__":
    main()
