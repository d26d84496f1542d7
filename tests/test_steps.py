"""Each step's logic on tiny fixtures in a temp dir (no KFP): ingest, preprocess, balance,
train, evaluate and push, plus the wrapper's declared inputs and outputs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from helpers import write_shapes_folder

from medkfp import vocab
from medkfp.components.balance.logic import balance, resample_ids
from medkfp.components.evaluate.logic import evaluate
from medkfp.components.grid.logic import expand_grid
from medkfp.components.ingest.layouts import LayoutError
from medkfp.components.ingest.logic import ingest, read_manifest
from medkfp.components.preprocess.logic import preprocess, split_examples
from medkfp.components.push.logic import champion_decision, push, select_best
from medkfp.components.train.logic import parse_example, train
from medkfp.imaging import load_signature
from medkfp.model_repository import ModelRepository
from medkfp.store import open_store
from medkfp.synth import synth_covid

RUN = "test-run"


@pytest.fixture
def covid_folder(tmp_path):
    synth_covid(tmp_path / "covid", per_class=6, size=48, seed=3)
    return tmp_path / "covid"


# --- ingest ------------------------------------------------------------------------------


def test_ingest_covid_layout_uploads_every_accepted_image(covid_folder, local_store):
    summary = ingest(vocab.COVID, str(covid_folder), local_store.uri, RUN)
    counts = summary["counts"]
    assert counts == {"found": 24, "accepted": 24, "rejected": 0, "ignored": counts["ignored"]}
    assert counts["ignored"] >= 24  # the masks, never counted as images
    assert summary["class_names"] == list(vocab.COVID_CLASSES)
    assert summary["class_counts"] == {c: 6 for c in vocab.COVID_CLASSES}
    manifest = read_manifest(summary)
    assert set(manifest["label"]) == set(vocab.COVID_CLASSES)
    assert manifest["path"].str.contains("/images/").all()
    for row in manifest.itertuples():
        assert local_store.exists(vocab.raw_image_key(RUN, row.id, row.suffix))


def test_ingest_rejects_broken_files_with_reasons_and_counts_add_up(shapes_folder, local_store):
    (shapes_folder / "plain" / "empty.png").write_bytes(b"")
    (shapes_folder / "plain" / "truncated.png").write_bytes(
        (shapes_folder / "plain" / "plain-0.png").read_bytes()[:60]
    )
    (shapes_folder / "stripes" / "notes.txt").write_text("not an image")
    (shapes_folder / "stray.png").write_bytes((shapes_folder / "plain" / "plain-1.png").read_bytes())
    summary = ingest(vocab.IMAGEFOLDER, str(shapes_folder), local_store.uri, RUN)
    counts = summary["counts"]
    assert counts["found"] == counts["accepted"] + counts["rejected"]
    assert counts["accepted"] == 36 and counts["rejected"] == 4
    reasons = {r["path"]: r["reason"] for r in summary["rejects"]}
    assert reasons["plain/empty.png"].startswith("empty file")
    assert reasons["plain/truncated.png"].startswith("truncated or corrupt")
    assert reasons["stripes/notes.txt"].startswith("not an image")
    assert reasons["stray.png"] == "not inside a class folder"
    stored = pd.read_csv(local_store.uri_for(summary["rejects_key"]))
    assert len(stored) == 4


def test_ingest_wrong_layout_is_one_clear_error(shapes_folder, local_store):
    with pytest.raises(LayoutError, match="not the COVID-19 Radiography Database layout.*missing"):
        ingest(vocab.COVID, str(shapes_folder), local_store.uri, RUN)
    with pytest.raises(LayoutError, match="is not a folder"):
        ingest(vocab.IMAGEFOLDER, str(shapes_folder / "nope"), local_store.uri, RUN)


# --- preprocess ----------------------------------------------------------------------------


def test_split_reproduces_the_covid_study_totals():
    counts = dict(zip(vocab.COVID_CLASSES, (3616, 6012, 10192, 1345)))
    labels = pd.Series([c for c, n in counts.items() for _ in range(n)])
    split = split_examples(labels, 0.2, 0.2, seed=0)
    assert split.value_counts().to_dict() == {"train": 13545, "val": 3387, "test": 4233}
    # stratified: every class keeps its share in every split (to within one image)
    table = pd.crosstab(labels, split)
    for name, n in counts.items():
        assert abs(table.loc[name, "test"] - 0.2 * n) <= 1


def test_split_refuses_a_class_too_small_to_split():
    with pytest.raises(ValueError, match="needs at least 3 per class"):
        split_examples(pd.Series(["a"] * 10 + ["b"] * 2), 0.2, 0.2, 0)


def test_preprocess_writes_resized_shards_per_split(covid_folder, s3_env, tmp_path):
    store = open_store("s3://medkfp-test")
    summary = preprocess(ingest(vocab.COVID, str(covid_folder), store.uri, RUN), image_size=32)
    splits = summary["splits"]
    assert sum(s["count"] for s in splits.values()) == 24
    assert {s: splits[s]["count"] for s in vocab.SPLITS} == {"train": 15, "val": 4, "test": 5}
    records = []
    for split in vocab.SPLITS:
        for key in splits[split]["shards"]:
            assert key.startswith(f"runs/{RUN}/shards/{split}-")
            path = tmp_path / key.rsplit("/", 1)[-1]
            store.get_file(key, path)
            records += list(tf.data.TFRecordDataset(str(path)).map(parse_example))
    assert len(records) == 24
    image = tf.io.decode_png(records[0]["image"])
    assert image.shape == (32, 32, 3)


# --- balance --------------------------------------------------------------------------------


def test_resample_ids_under_and_over():
    ids = np.array([f"i{k}" for k in range(10)], dtype=object)
    labels = np.array(["a"] * 7 + ["b"] * 3)
    assert sum(resample_ids(ids, labels, "none", 0).values()) == 10
    under = resample_ids(ids, labels, "undersample", 0)
    assert sum(under.values()) == 6 and all(n == 1 for n in under.values())
    over = resample_ids(ids, labels, "oversample", 0)
    assert sum(over.values()) == 14
    assert sum(n for i, n in over.items() if int(i[1:]) >= 7) == 7
    with pytest.raises(ValueError, match="unknown balancing 'smote'"):
        resample_ids(ids, labels, "smote", 0)


def test_balance_touches_the_train_split_only(shapes_folder, local_store):
    (shapes_folder / "circles" / "extra.png").write_bytes(
        (shapes_folder / "circles" / "circles-0.png").read_bytes()
    )
    dataset = preprocess(ingest(vocab.IMAGEFOLDER, str(shapes_folder), local_store.uri, RUN), 32)
    train_counts = dataset["splits"]["train"]["class_counts"]
    for strategy, target in (("undersample", min), ("oversample", max)):
        result = balance(dataset, strategy, seed=0)
        assert result["before"] == train_counts
        assert set(result["after"].values()) == {target(train_counts.values())}


# --- train, evaluate, push --------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny real training run shared by the train / evaluate / push tests."""
    tmp = tmp_path_factory.mktemp("trained")
    store = open_store(str(tmp / "store"))
    folder = write_shapes_folder(tmp / "shapes", per_class=30)
    ingested = ingest(vocab.IMAGEFOLDER, str(folder), store.uri, RUN)
    dataset = preprocess(ingested, 32)
    balanced = balance(dataset, "none")
    candidate = vocab.Candidate("simple-cnn", "none", batch_size=8, learning_rate=3e-3).to_dict()
    model = train(dataset, balanced, candidate, epochs=12)
    return store, ingested, dataset, model


def test_train_exports_the_serving_signature(trained, tmp_path):
    store, _, _, model = trained
    assert model["epochs_run"] >= 1 and model["devices"]
    store.download_dir(model["model_key"], tmp_path / "m")
    _, signature = load_signature(tmp_path / "m")
    inputs = signature.structured_input_signature[1]
    assert inputs[vocab.INPUT_KEY].dtype == tf.string
    outputs = signature.structured_outputs
    assert outputs[vocab.OUTPUT_PROBABILITIES].shape.as_list() == [None, 3]
    assert outputs[vocab.OUTPUT_CLASSES].dtype == tf.string


def test_evaluate_scores_the_test_split(trained):
    _, _, dataset, model = trained
    result = evaluate(dataset, model)
    metrics = result["metrics"]
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.sum() == dataset["splits"]["test"]["count"]
    assert metrics["class_names"] == ["circles", "plain", "stripes"]
    assert metrics["macro_f1"] >= 0.8, metrics
    assert set(metrics["per_class"]["plain"]) == {"precision", "recall", "f1", "specificity", "support"}


def evaluation(name: str, macro_f1: float, balanced_accuracy: float = 0.5) -> dict:
    return {
        "candidate": {"name": name},
        "metrics": {"macro_f1": macro_f1, "balanced_accuracy": balanced_accuracy},
    }


def test_select_best_by_macro_f1_then_balanced_accuracy():
    evaluations = [evaluation("a", 0.8, 0.9), evaluation("b", 0.9, 0.1), evaluation("c", 0.9, 0.2)]
    assert select_best(evaluations)["candidate"]["name"] == "c"


def test_champion_gate():
    champion = {"version": 3, "metrics": {"macro_f1": 0.90}}
    assert champion_decision(evaluation("x", 0.5), None, "macro_f1", 0.005) == (True, "no champion yet")
    pushed, reason = champion_decision(evaluation("x", 0.904), champion, "macro_f1", 0.005)
    assert not pushed and "not better than champion v3" in reason
    pushed, reason = champion_decision(evaluation("x", 0.91), champion, "macro_f1", 0.005)
    assert pushed and "better than champion v3" in reason


def test_push_publishes_then_refuses_an_equal_model(trained):
    store, ingested, dataset, model = trained
    scored = evaluate(dataset, model)
    first = push([scored], ingested, dataset, store.uri)
    assert first["pushed"]["version"] == 1 and first["push_reason"] == "no champion yet"
    assert first["pushed"]["model_name"] == "shapes"
    assert first["counts"]["train"] + first["counts"]["val"] + first["counts"]["test"] == 90
    repository = ModelRepository(store)
    assert repository.stable_version("shapes") == 1
    metadata = repository.metadata("shapes", 1)
    assert metadata["class_names"] == ["circles", "plain", "stripes"]
    assert metadata["files"] and "saved_model.pb" in metadata["files"]
    assert store.exists("models/shapes/1/MODEL_CARD.md")
    second = push([scored], ingested, dataset, store.uri)
    assert second["pushed"] is None
    assert second["push_reason"].startswith("not better than champion v1")
    assert repository.complete_versions("shapes") == [1]
    json.dumps(second)  # the summary is plain JSON


# --- grid -----------------------------------------------------------------------------------------


def test_quick_grid_and_grid_files(tmp_path):
    assert [c["name"] for c in expand_grid("quick")] == [
        "simple-cnn-none", "simple-cnn-undersample", "simple-cnn-oversample",
    ]
    path = tmp_path / "grid.yaml"
    path.write_text("- {architecture: mobilenetv2, balancing: oversample, batch_size: 8}\n")
    assert expand_grid(str(path))[0]["batch_size"] == 8
    with pytest.raises(ValueError, match="unknown architecture"):
        expand_grid('[{"architecture": "vgg", "balancing": "none"}]')
    with pytest.raises(ValueError, match="neither one of quick"):
        expand_grid("paperz")
