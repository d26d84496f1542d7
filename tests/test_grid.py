"""The grid step: built-in grids, grid files, run-level settings on every candidate, bad-grid errors.

The built-in grids are quick and the two studies' paper grids; a bad grid gets a one-line error."""

from __future__ import annotations

import json

import pytest

from medkfp import vocab
from medkfp.components.grid.logic import expand_grid, grid_json, run_image_size_of


def by_name(candidates: list[dict]) -> dict[str, dict]:
    return {c["name"]: c for c in candidates}


def test_quick_grid_and_grid_files(tmp_path):
    assert [c["name"] for c in expand_grid("quick")] == [
        "simple-cnn-none",
        "simple-cnn-undersample",
        "simple-cnn-oversample",
    ]
    path = tmp_path / "grid.yaml"
    path.write_text("- {architecture: mobilenetv2, balancing: oversample, batch_size: 8}\n")
    assert expand_grid(str(path))[0]["batch_size"] == 8
    with pytest.raises(ValueError, match="unknown architecture"):
        expand_grid('[{"architecture": "vgg", "balancing": "none"}]')
    with pytest.raises(ValueError, match="neither one of quick"):
        expand_grid("paperz")


def test_quick_grid_keeps_its_cpu_settings():
    for c in expand_grid("quick"):
        assert (c["batch_size"], c["learning_rate"], c["optimizer"]) == (16, 3e-3, "adam")
        assert (c["weights"], c["dense_units"], c["epochs"]) == ("none", 0, vocab.DEFAULT_EPOCHS)
        assert c["image_size"] == vocab.DEFAULT_IMAGE_SIZE


def test_covid_paper_grid_is_the_studys_models_a_b_c():
    grid = by_name(expand_grid("paper", vocab.COVID))
    assert list(grid) == ["resnet50-none", "mobilenetv2-undersample", "resnet50-oversample"]
    for c in grid.values():
        assert (c["optimizer"], c["learning_rate"], c["epochs"], c["image_size"]) == ("adamax", 1e-3, 20, 224)
        assert c["weights"] == "imagenet" and c["freeze_backbone"] is False
    assert grid["resnet50-none"]["batch_size"] == grid["resnet50-oversample"]["batch_size"] == 32
    model_b = grid["mobilenetv2-undersample"]
    assert model_b["batch_size"] == 8
    assert model_b["dense_units"] < grid["resnet50-none"]["dense_units"]  # B's smaller head


def test_mias_paper_grid_is_resnet101_plus_balanced_variants():
    grid = by_name(expand_grid("paper", vocab.MIAS))
    assert set(grid) == {
        "resnet101-none",
        "resnet101-oversample",
        "resnet101-class_weight",
        "mobilenetv2-oversample",
        "mobilenetv2-class_weight",
    }
    for c in grid.values():
        assert (c["optimizer"], c["learning_rate"], c["epochs"]) == ("adam", 1e-4, 10)
        assert (c["batch_size"], c["image_size"]) == (32, 256)


def test_paper_grid_needs_one_of_the_studies_datasets():
    with pytest.raises(ValueError, match="paper grid exists for .*use --grid quick or a grid file"):
        expand_grid("paper", vocab.IMAGEFOLDER)


def test_run_settings_override_every_candidate():
    uri = "s3://medkfp/weights/{architecture}.weights.h5"
    grid = expand_grid("paper", vocab.COVID, epochs=2, image_size=32, weights=uri, freeze_backbone=True)
    for c in grid:
        assert (c["epochs"], c["image_size"], c["weights"], c["freeze_backbone"]) == (2, 32, uri, True)
    # the small CNN has no backbone: weights and freezing leave it as it is
    quick = expand_grid("quick", epochs=3, weights="imagenet", freeze_backbone=True)
    assert {(c["epochs"], c["weights"], c["freeze_backbone"]) for c in quick} == {(3, "none", False)}


def test_image_size_comes_from_the_grid_unless_given(tmp_path):
    assert {c["image_size"] for c in expand_grid("paper", vocab.MIAS)} == {256}
    assert {c["image_size"] for c in expand_grid("paper", vocab.MIAS, image_size=48)} == {48}
    mixed = json.dumps(
        [
            {"architecture": "mobilenetv2", "balancing": "none", "image_size": 96},
            {"architecture": "resnet50", "balancing": "none", "image_size": 128},
        ]
    )
    with pytest.raises(ValueError, match=r"different image sizes \[96, 128\].*give --image-size"):
        expand_grid(mixed)
    assert {c["image_size"] for c in expand_grid(mixed, image_size=64)} == {64}
    assert run_image_size_of("paper", vocab.COVID) == 224
    assert run_image_size_of("quick") == vocab.DEFAULT_IMAGE_SIZE


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"architecture": "resnet50", "balancing": "smote"}, "unknown balancing 'smote'"),
        ({"architecture": "resnet50", "balancing": "none", "optimizer": "lion"}, "unknown optimizer"),
        ({"architecture": "resnet50", "balancing": "none", "weights": "imagenet21k"}, "use imagenet, none"),
        ({"architecture": "simple-cnn", "balancing": "none", "weights": "imagenet"}, "no pretrained"),
        ({"architecture": "resnet50", "balancing": "none", "epochs": 0}, "epochs must be at least 1"),
        ({"architecture": "resnet50", "balancing": "none", "learning_rate": 0}, "must be positive"),
        ({"architecture": "resnet50", "balancing": "none", "dropout": 0.5}, "unknown key.*dropout"),
        ({"architecture": "resnet50"}, "needs 'architecture' and 'balancing'"),
        ({"architecture": "resnet50", "balancing": "none", "name": "A"}, "named <architecture>-<balancing>"),
    ],
)
def test_bad_grid_entries_are_one_line_errors(entry, message):
    with pytest.raises(ValueError, match=message) as error:
        expand_grid(json.dumps([entry]))
    assert "\n" not in str(error.value)


def test_duplicates_and_bad_run_settings_are_refused():
    twice = json.dumps([{"architecture": "resnet50", "balancing": "none"}] * 2)
    with pytest.raises(ValueError, match="duplicate candidates"):
        expand_grid(twice)
    with pytest.raises(ValueError, match="weights 'vgg'"):
        expand_grid("quick", weights="vgg")


def test_grid_json_keeps_names_and_inlines_files(tmp_path):
    assert grid_json("quick") == "quick"
    assert grid_json("paper", vocab.MIAS) == "paper"
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({"candidates": [{"architecture": "resnet101", "balancing": "class_weight"}]}))
    inlined = json.loads(grid_json(str(path)))
    assert inlined[0]["name"] == "resnet101-class_weight"
    assert expand_grid(json.dumps(inlined)) == inlined  # the pipeline's grid step reads it back
