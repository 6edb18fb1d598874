"""The model card shows no server paths."""

from __future__ import annotations

import json

from service.api.health import without_server_paths


def strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def test_the_model_card_shows_no_server_paths(start_app, tabular_model_dir, tabular_csv):
    """It showed the training output path (and the data file's), where the server keeps its files."""
    manifest = json.loads((tabular_model_dir / "manifest.json").read_text())
    assert manifest["training"]["config"]["out"] == str(tabular_model_dir)  # what the manifest holds
    card = start_app(tabular_model_dir).get("/v1/model")
    assert card.status_code == 200
    body = card.json()
    assert not [s for s in strings(body) if "/" in s]
    assert str(tabular_model_dir.parent) not in card.text and str(tabular_csv.parent) not in card.text
    assert body["training"]["config"]["out"] == tabular_model_dir.name
    assert body["training"]["config"]["data"] == tabular_csv.name
    assert body["training"]["data_source"] == manifest["training"]["data_source"].rsplit("/", 1)[-1]
    assert body["scoring"] == manifest["scoring"]  # numbers and names pass unchanged


def test_without_server_paths():
    assert without_server_paths({"a": "/srv/models/x/", "b": ["C:\\data\\rows.csv", 1], "c": [1.5, 2.5], "d": "digits"}) == {
        "a": "x", "b": ["rows.csv", 1], "c": [1.5, 2.5], "d": "digits",
    }
