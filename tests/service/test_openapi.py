"""The OpenAPI document tells the truth, and /docs and /redoc work offline (service/http/app.py, api/docs.py)."""

from __future__ import annotations

import re

import pytest
from openapi_spec_validator import validate

ERROR = {"$ref": "#/components/schemas/Error"}


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
