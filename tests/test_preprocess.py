"""Preprocess: the stratified and grouped split, and bounded, checksummed TFRecord shards in the store.

The split is checked on the Table II totals, MIAS pairs and duplicates."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from sklearn.model_selection import train_test_split

from medkfp import vocab
from medkfp.components.ingest.logic import ingest
from medkfp.components.preprocess.logic import converted, preprocess, records_per_shard, resize_png_fn
from medkfp.components.preprocess.split import groups_across_splits, split_examples
from medkfp.shards import parse_example
from medkfp.store import LocalStore, StoreError, open_store
from medkfp.synth import synth_covid, synth_mias
from medkfp.tables import read_examples

RUN = "test-run"
STUDY_COUNTS = dict(zip(vocab.COVID_CLASSES, (3616, 6012, 10192, 1345)))


def study_labels() -> pd.Series:
    return pd.Series([c for c, n in STUDY_COUNTS.items() for _ in range(n)])


def assert_no_group_across_splits(groups: pd.Series, split: pd.Series) -> None:
    spans = split.groupby(groups.to_numpy()).nunique()
    assert (spans == 1).all(), spans[spans > 1]
    assert groups_across_splits(groups, split) == 0


def assert_every_class_in_every_split(labels: pd.Series, split: pd.Series) -> None:
    table = pd.crosstab(labels, split).reindex(columns=["train", "val", "test"], fill_value=0)
    assert (table > 0).all().all(), table


# --- split ------------------------------------------------------------------------------------


def test_split_reproduces_the_covid_study_totals():
    labels = study_labels()
    split = split_examples(labels, 0.2, 0.2, seed=0)
    assert split.value_counts().to_dict() == {"train": 13545, "val": 3387, "test": 4233}
    # stratified: every class keeps its share in every split (to within one image)
    table = pd.crosstab(labels, split)
    for name, n in STUDY_COUNTS.items():
        assert abs(table.loc[name, "test"] - 0.2 * n) <= 1


def test_a_split_too_small_for_its_classes_names_the_fraction_that_fixes_it():
    """4 classes of 3 images: 20 % test is 3 images, too few to hold every class. The error
    names the fraction to use instead (not sklearn's "test_size = 3 should be greater or
    equal to the number of classes"), and the fractions it names give a stratified split."""
    labels = pd.Series([c for c in "abcd" for _ in range(3)])
    fractions = {"test": 0.2, "val": 0.2}
    for _ in range(3):
        try:
            split = split_examples(labels, fractions["test"], fractions["val"], 0)
            break
        except ValueError as e:
            found = re.search(r"raise --(test|val)-fraction to at least (0\.\d+)", str(e))
            assert found, str(e)
            fractions[found[1]] = float(found[2])
    else:
        pytest.fail(f"the suggested fractions {fractions} still do not split")
    assert fractions["test"] > 0.2 and fractions["val"] > 0.2
    assert_every_class_in_every_split(labels, split)
    with pytest.raises(ValueError, match=r"test split would take 11 of the 12 images .* at most 0\.33"):
        split_examples(labels, 0.9, 0.2, 0)
    too_few = pd.Series(list("abcd") * 5 + ["e"] * 6)  # 26 images, 5 classes: the val cut lacks them
    with pytest.raises(ValueError, match=r"val split would take 4 of the 20 images .* at least 0\.21"):
        split_examples(too_few, 0.2, 0.2, 0)


def test_split_refuses_a_class_too_small_to_split():
    with pytest.raises(ValueError, match="needs at least 3 per class"):
        split_examples(pd.Series(["a"] * 10 + ["b"] * 2), 0.2, 0.2, 0)
    with pytest.raises(ValueError, match="--test-fraction must be between 0 and 1"):
        split_examples(pd.Series(["a"] * 10), 1.0, 0.2, 0)


def test_without_groups_of_two_the_split_is_sklearns_stratified_split():
    labels = study_labels()
    singletons = pd.Series([f"id{i}" for i in range(len(labels))])
    split = split_examples(labels, 0.2, 0.2, 7, groups=singletons)
    rest, test = train_test_split(labels.index.to_numpy(), test_size=0.2, stratify=labels, random_state=7)
    _, val = train_test_split(rest, test_size=0.2, stratify=labels.loc[rest], random_state=7)
    assert set(split[split == "test"].index) == set(test)
    assert set(split[split == "val"].index) == set(val)
    assert split.equals(split_examples(labels, 0.2, 0.2, 7))


def test_duplicate_groups_stay_together_and_table_ii_totals_still_hold():
    labels = study_labels()
    groups = pd.Series([f"id{i}" for i in range(len(labels))])
    for first, second in ((5, 100), (3700, 9000), (20000, 20500), (12, 13)):
        groups.iloc[second] = groups.iloc[first]  # identical files, even across classes
    split = split_examples(labels, 0.2, 0.2, 0, groups=groups)
    assert split.value_counts().to_dict() == {"train": 13545, "val": 3387, "test": 4233}
    assert_no_group_across_splits(groups, split)


@pytest.mark.parametrize("test_fraction", [0.1, 0.2, 0.3, 0.25])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mias_pairs_never_span_two_splits(test_fraction, seed):
    """The MIAS study's splits (90/10, 80/20, 70/30, 75/25) with left/right pairs as groups."""
    rng = np.random.default_rng(seed)
    counts = {"ARCH": 19, "ASYM": 15, "CALC": 25, "CIRC": 23, "MISC": 14, "NORM": 207, "SPIC": 19}
    labels = pd.Series(rng.permutation([c for c, n in counts.items() for _ in range(n)]))
    pairs = pd.Series([f"mias-pair-{i // 2 + 1:03d}" for i in range(len(labels))])
    split = split_examples(labels, test_fraction, 0.1, seed, groups=pairs)
    assert_no_group_across_splits(pairs, split)
    assert_every_class_in_every_split(labels, split)
    table = pd.crosstab(labels, split)
    assert abs((split == "test").sum() - test_fraction * len(labels)) <= 4
    for name, n in counts.items():  # stratified to within a pair or two
        assert abs(table.loc[name, "test"] - test_fraction * n) <= 2.5, table


@pytest.mark.parametrize("seed", range(4))
def test_few_groups_still_put_every_class_in_every_split(seed):
    """4 classes of 3 pairs: filling to targets alone sent every pair to train (a pair
    overshoots a target of one image), leaving val empty and most classes out of test."""
    labels = pd.Series([c for c in "abcd" for _ in range(6)])
    pairs = pd.Series([f"{c}{i // 2}" for c in "abcd" for i in range(6)])
    split = split_examples(labels, 0.2, 0.2, seed, groups=pairs)
    assert_no_group_across_splits(pairs, split)
    assert_every_class_in_every_split(labels, split)


def test_groups_too_tangled_to_cover_every_split_are_refused_with_the_class_and_split():
    # groups [b b] [a a] [b a] [b b] [a]: seed 65's placement cannot move one out of train
    labels = pd.Series(list("bbaababba"))
    pairs = pd.Series([f"g{i // 2}" for i in range(9)])
    with pytest.raises(ValueError, match="class 'a' would have no image in the val split.*another --seed"):
        split_examples(labels, 0.2, 0.2, 65, groups=pairs)
    worked = []  # the advice holds: another seed splits it
    for seed in range(10):
        try:
            worked.append(split_examples(labels, 0.2, 0.2, seed, groups=pairs))
        except ValueError:
            pass
    assert worked
    for split in worked:
        assert_every_class_in_every_split(labels, split)


def test_grouped_split_refuses_a_class_in_too_few_groups():
    labels = pd.Series(["a"] * 20 + ["b"] * 4)
    groups = pd.Series([f"g{i}" for i in range(20)] + ["x", "x", "y", "y"])
    with pytest.raises(ValueError, match="class 'b' has images in 2 group.*needs at least 3"):
        split_examples(labels, 0.2, 0.2, 0, groups=groups)


# --- shards --------------------------------------------------------------------------------------


def read_records(store, keys: list[str], tmp_path) -> list[dict]:
    records = []
    for key in keys:
        path = tmp_path / key.rsplit("/", 1)[-1]
        store.get_file(key, path)
        records += [
            {k: v.numpy() for k, v in parse_example(r).items()} for r in tf.data.TFRecordDataset(str(path))
        ]
    return records


def test_preprocess_writes_resized_shards_per_split(s3_env, tmp_path):
    synth_covid(tmp_path / "covid", per_class=6, size=48, seed=3)
    store = open_store("s3://medkfp-test")
    summary = preprocess(ingest(vocab.COVID, str(tmp_path / "covid"), store.uri, RUN), image_size=32)
    splits = summary["splits"]
    assert sum(s["count"] for s in splits.values()) == 24
    assert {s: splits[s]["count"] for s in vocab.SPLITS} == {"train": 15, "val": 4, "test": 5}
    records = []
    for split in vocab.SPLITS:
        assert all(k.startswith(f"runs/{RUN}/shards/{split}-") for k in splits[split]["shards"])
        records += read_records(store, splits[split]["shards"], tmp_path)
    assert len(records) == 24
    assert tf.io.decode_png(records[0]["image"]).shape == (32, 32, 3)
    assert store.get_json(summary["shards_key"])["splits"] == splits


def test_a_truncated_pack_stops_preprocess_with_the_store_error_and_no_summary(local_store, tmp_path):
    """The read error comes out of the converting threads as itself: one line, with the fix."""
    synth_covid(tmp_path / "covid", per_class=6, size=48, seed=3)
    ingested = ingest(vocab.COVID, str(tmp_path / "covid"), local_store.uri, RUN)
    pack = sorted(k for k in local_store.list_keys(f"runs/{RUN}") if k.endswith(".tar"))[-1]
    path = local_store.root / pack
    path.write_bytes(path.read_bytes()[:1024])
    with pytest.raises(
        StoreError, match=r"^pack .* ends before the \d+ bytes at offset \d+ .*run ingest again$"
    ):
        preprocess(ingested, image_size=32)
    assert not local_store.exists(vocab.run_key(RUN, "preprocess", "shards.json"))


def test_converted_keeps_the_order_and_raises_a_failed_read_as_itself():
    """The tf.data map gives each image's conversion in input order, and a read that fails
    after some images comes out as its own exception, after the images before it."""
    pngs = [tf.io.encode_png(tf.fill([4 + i, 5, 1], tf.constant(i, tf.uint8))).numpy() for i in range(7)]
    resize = resize_png_fn(6)

    def images():
        yield from pngs
        raise StoreError("pack p ends early: run ingest again")

    out = []
    with pytest.raises(StoreError, match="^pack p ends early"):
        for png in converted(images(), resize, window=3):
            out.append(png)
    assert out == [resize(tf.constant(png)).numpy() for png in pngs]


def test_a_failed_shard_upload_stops_preprocess_and_writes_no_summary(local_store, tmp_path, monkeypatch):
    """Shards go up in a background thread: its failure still stops the step, as itself."""
    synth_covid(tmp_path / "covid", per_class=6, size=48, seed=3)
    ingested = ingest(vocab.COVID, str(tmp_path / "covid"), local_store.uri, RUN)
    put_file = LocalStore.put_file

    def failing(store, key, path):
        if key.endswith(".tfrecord") and "/val-" in key:
            raise StoreError(f"store {store.uri}: disk full writing {key}")
        put_file(store, key, path)

    monkeypatch.setattr(LocalStore, "put_file", failing)
    with pytest.raises(StoreError, match="disk full writing .*/val-00000-of-"):
        preprocess(ingested, image_size=32)
    assert not local_store.exists(vocab.run_key(RUN, "preprocess", "shards.json"))
    assert local_store.list_keys(vocab.run_key(RUN, "shards"))  # the train shards went up


def test_shards_are_bounded_counted_and_checksummed(shapes_folder, local_store, tmp_path):
    image_size = 16
    max_bytes = 5 * (image_size * image_size * 3 + 1024)  # a handful of records per shard
    summary = preprocess(
        ingest(vocab.IMAGEFOLDER, str(shapes_folder), local_store.uri, RUN),
        image_size,
        shard_max_bytes=max_bytes,
    )
    per_shard = records_per_shard(image_size, vocab.SHARD_MAX_RECORDS, max_bytes)
    assert 1 < per_shard <= 6
    train = summary["splits"]["train"]
    assert len(train["shards"]) == -(-train["count"] // per_shard) > 1
    class_totals: dict[str, int] = {}
    for shard in train["shard_files"]:
        data = local_store.get_bytes(shard["key"])
        assert len(data) == shard["bytes"] <= max_bytes
        assert hashlib.sha256(data).hexdigest() == shard["sha256"]
        assert shard["uri"] == local_store.uri_for(shard["key"])
        records = read_records(local_store, [shard["key"]], tmp_path)
        assert len(records) == shard["count"]
        for name, n in shard["class_counts"].items():
            class_totals[name] = class_totals.get(name, 0) + n
    assert class_totals == {c: n for c, n in train["class_counts"].items() if n}
    # shuffled before sharding: the first shard is not one class
    first = read_records(local_store, train["shards"][:2], tmp_path)
    assert len({int(r["label"]) for r in first}) > 1


def test_mias_preprocess_keeps_pairs_together(tmp_path, local_store):
    synth_mias(tmp_path / "mias", per_class=8, size=32)
    ingested = ingest(vocab.MIAS, str(tmp_path / "mias"), local_store.uri, RUN)
    summary = preprocess(ingested, 16, test_fraction=0.25, val_fraction=0.2)
    assert summary["leakage"] == {"groups_across_splits": 0, "groups": 28}
    examples = read_examples(summary)
    assert_no_group_across_splits(examples["group"], examples["split"])
    assert set(examples["group"]) == {f"mias-pair-{i:03d}" for i in range(1, 29)}
