"""Balance: the four strategies on the train split, class weights, and the before/after chart.

The chart is in the component's HTML artifact."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from helpers import write_shapes_folder
from PIL import Image
from sklearn.utils.class_weight import compute_class_weight

from medkfp import vocab
from medkfp.components.balance.logic import (
    balance,
    balance_chart,
    balance_html,
    balanced_counts,
    resample_ids,
)
from medkfp.components.ingest.logic import ingest
from medkfp.components.preprocess.logic import preprocess
from medkfp.tables import read_repeats

RUN = "test-run"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The shapes set with four more circles, so the train classes are unequal."""
    tmp = tmp_path_factory.mktemp("balance")
    folder = write_shapes_folder(tmp / "shapes")
    more = write_shapes_folder(tmp / "more", per_class=4, seed=1)
    for path in (more / "circles").iterdir():
        path.rename(folder / "circles" / f"more-{path.name}")
    return preprocess(ingest(vocab.IMAGEFOLDER, str(folder), str(tmp / "store"), RUN), 16)


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


def test_balanced_counts_for_every_strategy():
    labels = np.array(["a"] * 70 + ["b"] * 30 + ["c"] * 5, dtype=object)
    names = ["a", "b", "c"]
    assert balanced_counts(labels, names, "none") == {"a": 70, "b": 30, "c": 5}
    assert balanced_counts(labels, names, "class_weight") == {"a": 70, "b": 30, "c": 5}
    assert balanced_counts(labels, names, "undersample") == {"a": 5, "b": 5, "c": 5}
    assert balanced_counts(labels, names, "oversample") == {"a": 70, "b": 70, "c": 70}


def test_balance_touches_the_train_split_only(dataset):
    train_counts = dataset["splits"]["train"]["class_counts"]
    assert len(set(train_counts.values())) > 1
    for strategy, target in (("undersample", min), ("oversample", max)):
        result = balance(dataset, strategy, seed=0)
        assert result["before"] == train_counts
        assert set(result["after"].values()) == {target(train_counts.values())}
        assert result["count"] == len(train_counts) * target(train_counts.values())


def test_class_weight_keeps_every_image_once_and_hands_over_sklearns_weights(dataset):
    result = balance(dataset, "class_weight", seed=0)
    train_counts = dataset["splits"]["train"]["class_counts"]
    assert result["after"] == result["before"] == train_counts
    repeats = read_repeats(dataset["store"], result)
    assert len(repeats) == sum(train_counts.values()) and set(repeats["repeat"]) == {1}
    labels = np.array([c for c, n in train_counts.items() for _ in range(n)])
    expected = compute_class_weight("balanced", classes=np.array(list(train_counts)), y=labels)
    assert result["class_weights"] == pytest.approx(dict(zip(train_counts, expected)))
    # the rarest class weighs the most
    assert max(result["class_weights"], key=result["class_weights"].get) == min(
        train_counts, key=train_counts.get
    )
    assert "class_weights" not in balance(dataset, "none", seed=0)


def test_chart_and_html_show_before_and_after(dataset):
    result = balance(dataset, "oversample", seed=0)
    image = Image.open(io.BytesIO(balance_chart(result)))
    assert image.format == "PNG" and image.width > 300
    page = balance_html(result)
    embedded = re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1)
    assert Image.open(io.BytesIO(base64.b64decode(embedded))).format == "PNG"
    for name, n in result["after"].items():
        assert f"<td>{name}</td><td>{result['before'][name]}</td><td>{n}</td>" in page
    from medkfp.store import open_store

    stored = open_store(dataset["store"]).get_bytes(result["chart_key"])
    assert Image.open(io.BytesIO(stored)).format == "PNG"


def test_component_declares_the_chart_artifact():
    from medkfp.components.balance.component import balance as component

    outputs = component.component_spec.outputs
    assert outputs["class_balance"].type == "system.HTML@0.0.1"
    assert outputs["balanced"].type == "system.Artifact@0.0.1"
