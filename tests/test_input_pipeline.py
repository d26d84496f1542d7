"""The train step's input pipeline and its cache choices; parallel uploads of ingest.

The pipeline gives exactly the balanced examples (each shard record as many times as the
repeats table says); every cache choice is tried, and the choice is recorded."""

from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf
from training_helpers import prepare_shapes, quick_candidate

from medkfp.components.train import data
from medkfp.components.train import logic as train_logic
from medkfp.components.train.logic import train
from medkfp.components.train.models import build_model
from medkfp.parallel import UploadError, upload_all
from medkfp.shards import download_shards, parse_example
from medkfp.store import open_store
from medkfp.tables import read_repeats

SIZE = 16


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """(prepared run, local train shard paths, oversampled repeats) of a small shapes set."""
    root = tmp_path_factory.mktemp("pipeline")
    prepared = prepare_shapes(root, per_class=12, size=SIZE)
    balanced = prepared.balanced("oversample")
    table = read_repeats(prepared.store.uri, balanced)
    repeats = dict(zip(table["id"], table["repeat"].astype(int)))
    (root / "local").mkdir()
    paths = download_shards(prepared.store, prepared.dataset["splits"]["train"]["shards"], root / "local")
    return prepared, paths, repeats


def examples_of(ds: tf.data.Dataset) -> Counter:
    """Multiset of (label, image) over one pass; an image counts the same as its mirror image,
    since the pipelines flip at random."""
    seen: Counter = Counter()
    for images, labels in ds:
        assert images.dtype == tf.uint8 and images.shape[1:] == (SIZE, SIZE, 3)
        for image, label in zip(images.numpy(), labels.numpy()):
            key = min(image.tobytes(), image[:, ::-1].tobytes())
            seen[(int(label), hashlib.sha256(key).hexdigest())] += 1
    return seen


def balanced_examples(paths: list[str], repeats: dict[str, int]) -> Counter:
    """What one pass should give, read straight from the shards: each record `repeats` times."""
    expected: Counter = Counter()
    for record in tf.data.TFRecordDataset(paths):
        example = parse_example(record)
        image = tf.io.decode_png(example["image"], channels=3).numpy()
        key = min(image.tobytes(), image[:, ::-1].tobytes())
        expected[(int(example["label"]), hashlib.sha256(key).hexdigest())] += repeats[
            example["id"].numpy().decode()
        ]
    return +expected  # zero repeats: not there at all


@pytest.mark.parametrize("cache", ["none", "memory", "disk"])
def test_pipeline_gives_each_example_as_often_as_the_repeats_say(shards, cache, tmp_path):
    _, paths, repeats = shards
    before = balanced_examples(paths, repeats)
    assert sum(before.values()) == sum(repeats.values()) > len(repeats)  # oversampled: repeats
    ds = data.train_input(paths, repeats, SIZE, 8, seed=1, cache=cache, cache_dir=tmp_path)
    assert examples_of(ds) == before
    if cache != "none":  # the second pass reads the cache: the same examples again
        assert examples_of(ds) == before
    if cache == "disk":
        assert any(p.name.startswith("train-decoded") for p in tmp_path.iterdir())


def test_zero_repeats_drop_examples_and_repeat_mode_is_endless(shards):
    _, paths, repeats = shards
    half = len(repeats) // 2
    kept = {k: (n if i < half else 0) for i, (k, n) in enumerate(repeats.items())}
    ds = data.train_input(paths, kept, SIZE, 4, seed=0, cache="memory")
    assert sum(examples_of(ds).values()) == sum(kept.values())
    endless = data.train_input(paths, kept, SIZE, 4, seed=0, repeat=True)
    assert endless.cardinality() == tf.data.INFINITE_CARDINALITY
    assert len(list(endless.take(3 * len(kept)))) == 3 * len(kept)


def test_passes_that_end_run_without_autotuning_and_endless_ones_with_it(shards):
    """tf.data's autotuning held up the end of a finite pass for seconds (medkfp.tfdata): the
    passes Keras reads to their end (a one-pass epoch, validation) turn it off."""
    _, paths, repeats = shards
    for cache in ("none", "memory"):
        one_pass = data.train_input(paths, repeats, SIZE, 4, seed=0, cache=cache)
        assert one_pass.options().autotune.enabled is False
        endless = data.train_input(paths, repeats, SIZE, 4, seed=0, repeat=True, cache=cache)
        assert endless.options().autotune.enabled is not False
    validation = train_logic.eval_dataset(paths, SIZE, 4, len(repeats))
    assert validation.options().autotune.enabled is False
    assert sum(int(labels.shape[0]) for _, labels in validation) == len(repeats)


def test_models_cast_the_uint8_batches_themselves(shards):
    """The pipelines hand the model uint8 images; its float32 input casts them, so the
    model sees the same pixels as from float32 batches, and fits on the uint8 dataset."""
    prepared, paths, repeats = shards
    model = build_model("simple-cnn", len(prepared.dataset["class_names"]), SIZE)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    images, _ = next(iter(data.train_input(paths, repeats, SIZE, 8, seed=0)))
    np.testing.assert_allclose(
        model(images, training=False), model(tf.cast(images, tf.float32), training=False), rtol=1e-6
    )
    history = model.fit(data.train_input(paths, repeats, SIZE, 8, seed=0), epochs=1, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][0])


def test_cache_is_chosen_from_split_size_memory_and_disk(tmp_path):
    image = 224 * 224 * 3
    gib = 2**30
    assert data.choose_cache(10_000, 224, tmp_path, memory_bytes=8 * gib, disk_bytes=gib)["cache"] == "memory"
    on_disk = data.choose_cache(10_000, 224, tmp_path, memory_bytes=gib, disk_bytes=8 * gib)
    assert on_disk["cache"] == "disk" and on_disk["decoded_bytes"] == 10_000 * image
    assert data.choose_cache(10_000, 224, tmp_path, memory_bytes=gib, disk_bytes=gib)["cache"] == "none"
    assert data.choose_cache(10_000, 224, None, memory_bytes=gib, disk_bytes=8 * gib)["cache"] == "none"
    assert data.choose_cache(10, 224, tmp_path, cache="none")["reason"] == "asked for"
    with pytest.raises(ValueError, match="unknown input cache 'ram': use one of auto, memory"):
        data.choose_cache(10, 224, tmp_path, cache="ram")
    assert 0 < data.available_memory_bytes()
    assert data.FEATURES == train_logic.FEATURES  # one schema, as preprocess writes it


def test_train_summary_records_the_input_pipeline(shards):
    prepared, _, _ = shards
    trained = train(prepared.dataset, prepared.balanced(), quick_candidate(epochs=1))
    pipeline = trained["input_pipeline"]
    assert pipeline["cache"] == "memory"  # a few dozen 16 px images fit anywhere
    assert pipeline["examples"] == prepared.dataset["splits"]["train"]["count"]
    assert pipeline["decoded_bytes"] == pipeline["examples"] * SIZE * SIZE * 3


# --- ingest's parallel uploads -----------------------------------------------------------------


def test_parallel_uploads_put_every_object_once(s3_env):
    store = open_store("s3://medkfp-uploads")
    calls: Counter = Counter()
    put = store.put_bytes

    def counted(key, blob):
        calls[key] += 1
        put(key, blob)

    items = [(f"up/{i:03d}.bin", bytes([i % 256]) * (100 + i)) for i in range(120)]
    assert upload_all(counted, items, workers=8) == len(items)
    assert set(calls.values()) == {1} and len(calls) == len(items)
    assert sorted(store.list_keys("up/")) == [k for k, _ in items]
    assert store.get_bytes("up/007.bin") == items[7][1]


def test_parallel_upload_failures_are_reported_by_key(local_store):
    def flaky(key, blob):
        if key.endswith("3"):
            raise OSError(f"disk full writing {key}")
        local_store.put_bytes(key, blob)

    items = [(f"k{i}", b"x") for i in range(20)]
    with pytest.raises(UploadError, match=r"2 of 20 uploads failed \(first: k3: disk full") as e:
        upload_all(flaky, items, workers=4)
    assert sorted(e.value.failed) == ["k13", "k3"]
    assert len(local_store.list_keys()) == 18
