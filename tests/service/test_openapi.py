"""The OpenAPI document tells the truth, and /docs and /redoc work offline (service/http/app.py, api/docs.py)."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from openapi_spec_validator import validate

ERROR = {"$ref": "#/components/schemas/Error"}
PROTOCOL_ERROR = {"$ref": "#/components/schemas/ProtocolError"}


def operations(doc: dict):
    for path, methods in doc["paths"].items():
        for method, operation in methods.items():
            yield path, method, operation


@pytest.mark.parametrize("api_key", [None, "s3cret"])
def test_the_document_is_valid_openapi(start_app, digits_model_dir, api_key):
    client = start_app(digits_model_dir, api_key=api_key)
    headers = {"authorization": "Bearer s3cret"} if api_key else {}
    doc = client.get("/openapi.json", headers=headers).json()
    validate(doc)  # raises on any violation of the OpenAPI 3.1 schema
    assert doc["openapi"] == "3.1.0"


def test_operation_ids_are_the_route_names(digits_client):
    doc = digits_client.get("/openapi.json").json()
    ids = [operation["operationId"] for _, _, operation in operations(doc)]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"[a-z_]+", i) for i in ids), ids
    by_route = {(path, method): operation["operationId"] for path, method, operation in operations(doc)}
    assert by_route["/elbo", "post"] == "elbo"
    assert by_route["/encode", "post"] == "encode"
    assert by_route["/v1/model", "get"] == "model_card"
    assert by_route["/healthz", "get"] == "healthz"
    assert ("/metrics", "head") not in by_route


def test_native_errors_are_documented_with_the_error_schema(digits_client):
    doc = digits_client.get("/openapi.json").json()
    assert doc["components"]["schemas"]["Error"]["required"] == ["error", "code"]
    elbo = doc["paths"]["/elbo"]["post"]["responses"]
    assert sorted(elbo) == ["200", "400", "401", "413", "415", "422", "503"]
    for status in ("400", "401", "413", "415", "422", "503"):
        assert elbo[status]["content"]["application/json"]["schema"] == ERROR, status
    assert sorted(doc["paths"]["/decode"]["post"]["responses"]) == [
        "200",
        "400",
        "401",
        "406",
        "413",
        "415",
        "422",
        "503",
    ]
    assert (
        doc["paths"]["/v1/model/reload"]["post"]["responses"]["409"]["content"]["application/json"]["schema"] == ERROR
    )
    assert "HTTPValidationError" not in str([doc["paths"][p] for p in ("/encode", "/sample", "/decode", "/elbo")])


def test_a_documented_422_is_what_the_route_sends(digits_client):
    response = digits_client.post("/elbo", json={"instances": []})
    assert response.status_code == 422
    assert set(response.json()) == {"error", "code"}


@pytest.mark.parametrize(("api_key", "security"), [(None, [{"bearer": []}, {}]), ("s3cret", [{"bearer": []}])])
def test_a_bearer_scheme_covers_the_routes_behind_the_key(start_app, digits_model_dir, api_key, security):
    client = start_app(digits_model_dir, api_key=api_key)
    doc = client.get("/openapi.json", headers={"authorization": "Bearer s3cret"}).json()
    assert doc["components"]["securitySchemes"]["bearer"]["type"] == "http"
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["paths"]["/elbo"]["post"]["security"] == security
    assert doc["paths"]["/metrics"]["get"]["security"] == security
    assert "security" not in doc["paths"]["/healthz"]["get"]  # public: probes need no key


@pytest.mark.parametrize(
    ("page", "assets"),
    [
        ("/docs", ["/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css", "/docs/static/favicon.png"]),
        ("/redoc", ["/docs/static/redoc.standalone.js", "/docs/static/favicon.png"]),
    ],
)
def test_the_docs_pages_load_nothing_from_elsewhere(digits_client, page, assets):
    response = digits_client.get(page)
    assert response.status_code == 200
    html = response.text
    assert re.findall(r"https?://", html) == []  # no CDN, no web fonts
    assert "/openapi.json" in html
    for asset in assets:
        assert asset in html
        served = digits_client.get(asset)
        assert served.status_code == 200, asset
        assert len(served.content) > 1000, asset


def test_asset_types_and_unknown_assets(digits_client):
    assert digits_client.get("/docs/static/swagger-ui-bundle.js").headers["content-type"].startswith("text/javascript")
    assert digits_client.get("/docs/static/swagger-ui.css").headers["content-type"].startswith("text/css")
    assert digits_client.get("/docs/static/redoc.standalone.js").headers["content-type"].startswith("text/javascript")
    assert digits_client.get("/docs/static/..%2Fcore.py").status_code == 404
    assert digits_client.get("/docs/static/core.py").status_code == 404


# --- the v2 bodies: real answers and requests against the documented schemas ---------------------------------
def validator(doc: dict, schema: dict) -> jsonschema.Draft202012Validator:
    """A validator of `schema`, a part of the document, whose "#/components/..." references resolve in it."""
    return jsonschema.Draft202012Validator({**schema, "components": doc["components"]})


def answer_schema(doc: dict, path: str, method: str, status: str) -> dict:
    return doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]


def assert_documented(doc: dict, path: str, method: str, response) -> None:
    """The answer's JSON is valid against the schema the document gives for its path, method and status."""
    schema = answer_schema(doc, path, method, str(response.status_code))
    errors = [e.message for e in validator(doc, schema).iter_errors(response.json())]
    assert errors == [], (path, response.status_code)


INFER = "/v2/models/{model_name}/infer"
DIGIT = [[[0.0] * 8] * 8]


def v2_requests() -> list[tuple[str, dict]]:
    """An inference request of every kind each model takes: (operation, body)."""
    instances = {"name": "instances", "shape": [1, 1, 8, 8], "datatype": "FP64", "data": [DIGIT]}
    return [
        ("encode", {"inputs": [instances], "id": "r1"}),
        ("encode", {"inputs": [dict(instances, datatype="FP32", data=[0.0] * 64)]}),
        ("sample", {"inputs": [instances], "parameters": {"n_samples": 2, "seed": 3, "decode": True}}),
        ("sample", {"inputs": [], "parameters": {"seed": 3}, "outputs": [{"name": "z"}]}),
        ("decode", {"inputs": [{"name": "z", "shape": [2, 4], "datatype": "FP64", "data": [0.5] * 8}]}),
        (
            "elbo",
            {
                "inputs": [instances],
                "parameters": {"n_samples": 2, "iw_samples": 3, "seed": 1, "fpr": 0.1, "priority": 0},
                "outputs": [{"name": "elbo"}, {"name": "is_anomaly", "parameters": {"binary_data": False}}],
            },
        ),
        ("elbo", {"inputs": [instances], "parameters": {"threshold": 30.0, "content_type": "np", "timeout": 0}}),
    ]


@pytest.mark.parametrize(("op", "body"), v2_requests())
def test_v2_inference_requests_and_answers_are_as_documented(digits_client, op, body):
    doc = digits_client.get("/openapi.json").json()
    request_schema = doc["paths"][INFER]["post"]["requestBody"]["content"]["application/json"]["schema"]
    validator(doc, request_schema).validate(body)
    response = digits_client.post(f"/v2/models/digits-{op}/infer", json=body)
    assert response.status_code == 200, response.text
    assert_documented(doc, INFER, "post", response)


def test_a_binary_answer_header_is_the_documented_json(digits_client):
    doc = digits_client.get("/openapi.json").json()
    body = {"inputs": [{"name": "z", "shape": [1, 4], "datatype": "FP64", "data": [0.0] * 4}]}
    response = digits_client.post(
        "/v2/models/digits-decode/infer", json=body | {"parameters": {"binary_data_output": True}}
    )
    assert response.headers["content-type"] == "application/octet-stream"
    header = json.loads(response.content[: int(response.headers["inference-header-content-length"])])
    validator(doc, answer_schema(doc, INFER, "post", "200")).validate(header)
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 8 * 64}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"inputs": [{"name": "instances", "shape": [1, 64], "datatype": "INT64", "data": [0] * 64}]},
            "'INT64' is not one of ['FP32', 'FP64']",
        ),
        ({"inputs": [{"name": "instances", "shape": [1, 64], "data": [0] * 64}]}, "'datatype' is a required property"),
        (
            {"inputs": [{"name": "instances", "shape": [1, -64], "datatype": "FP64", "data": [0] * 64}]},
            "-64 is less than the minimum of 0",
        ),
        (
            {"inputs": [], "parameters": {"samples": 3}},
            "Additional properties are not allowed ('samples' was unexpected)",
        ),
        ({"inputs": [], "parameters": {"seed": "7"}}, "'7' is not valid under any of the given schemas"),
        ({"inputs": [], "parameters": {"binary_data_output": 1}}, "1 is not of type 'boolean'"),
        ({"inputs": [], "parameters": {"content_type": "json"}}, "'np' was expected"),
        (
            {"inputs": [], "outputs": [{"name": "kl", "binary_data": True}]},
            "[{'name': 'kl', 'binary_data': True}] is not valid under any of the given schemas",
        ),
    ],
)
def test_requests_the_server_refuses_are_refused_by_the_schema_too(digits_client, body, message):
    doc = digits_client.get("/openapi.json").json()
    schema = doc["paths"][INFER]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert [e.message for e in validator(doc, schema).iter_errors(body)] == [message]
    assert digits_client.post("/v2/models/digits-elbo/infer", json=body).status_code == 400


@pytest.mark.parametrize(
    ("path", "url"),
    [
        ("/v2", "/v2"),
        ("/v2/health/live", "/v2/health/live"),
        ("/v2/health/ready", "/v2/health/ready"),
        ("/v2/models/{model_name}", "/v2/models/digits-elbo"),
        ("/v2/models/{model_name}", "/v2/models/digits-sample"),
        ("/v2/models/{model_name}/versions/{model_version}", "/v2/models/digits-encode/versions/1"),
        ("/v2/models/{model_name}", "/v2/models/digits-nothing"),
        ("/v2/models/{model_name}/ready", "/v2/models/digits-nothing/ready"),
        ("/v2/models/{model_name}/versions/{model_version}", "/v2/models/digits-encode/versions/7"),
    ],
)
def test_v2_metadata_health_and_errors_are_as_documented(digits_client, path, url):
    doc = digits_client.get("/openapi.json").json()
    assert_documented(doc, path, "get", digits_client.get(url))


@pytest.mark.parametrize(
    ("request_args", "status"),
    [
        (dict(content=b"{", headers={"content-type": "application/json"}), 400),
        (dict(content=b"{}", headers={"content-type": "text/plain"}), 415),
        (dict(json={"inputs": []}, url="/v2/models/other-elbo/infer"), 404),
    ],
)
def test_v2_inference_errors_are_as_documented(digits_client, request_args, status):
    doc = digits_client.get("/openapi.json").json()
    response = digits_client.post(request_args.pop("url", "/v2/models/digits-elbo/infer"), **request_args)
    assert response.status_code == status
    assert_documented(doc, INFER, "post", response)


def test_v2_routes_document_only_the_protocol_error_shape(digits_client):
    doc = digits_client.get("/openapi.json").json()
    for path, method, operation in operations(doc):
        if path.startswith("/v2"):
            errors = {status: answer for status, answer in operation["responses"].items() if status != "200"}
            assert "422" not in errors, (path, method)  # FastAPI's HTTPValidationError: never sent by a v2 route
            for status, answer in errors.items():
                assert answer["content"]["application/json"]["schema"] == PROTOCOL_ERROR, (path, status)
