"""The model card shows no server paths."""

from __future__ import annotations

import json

from service.core.artifact import load_artifact


def test_the_model_card_shows_no_server_paths(start_app, tabular_model_dir, tabular_csv):
    """It showed the training output path (and the data file's), where the server keeps its files."""
    manifest = json.loads((tabular_model_dir / "manifest.json").read_text())
    assert manifest["training"]["config"]["out"] == str(tabular_model_dir)  # what the manifest holds
    card = start_app(tabular_model_dir).get("/v1/model")
    assert card.status_code == 200
    body = card.json()
    assert str(tabular_model_dir.parent) not in card.text and str(tabular_csv.parent) not in card.text
    assert body["training"]["config"]["out"] == tabular_model_dir.name
    assert body["training"]["config"]["data"] == tabular_csv.name
    assert body["training"]["data_source"] == manifest["training"]["data_source"].rsplit("/", 1)[-1]
    assert body["scoring"] == manifest["scoring"]  # numbers and names pass unchanged


def test_only_the_path_fields_are_cut(tabular_model_dir):
    """A note such as "(1/54)" is not a path: only the data file and the output directory are cut."""
    manifest = load_artifact(tabular_model_dir).manifest
    training = manifest.training.model_copy(
        update={
            "data_source": "C:\\data\\rows.csv",
            "notes": ["false-alarm rate 0.01852 instead of 0.01: ... (1/54); 0.01 needs 99"],
            "config": {**manifest.training.config, "out": "/srv/models/x/"},
        }
    )
    card = manifest.model_copy(update={"training": training}).public()
    assert card["training"]["data_source"] == "rows.csv"
    assert card["training"]["config"]["out"] == "x"
    assert card["training"]["notes"] == ["false-alarm rate 0.01852 instead of 0.01: ... (1/54); 0.01 needs 99"]
