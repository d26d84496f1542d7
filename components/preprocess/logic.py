"""Preprocess: leakage-safe stratified split, resize to three channels, TFRecord shards in the store.

Shards hold PNG bytes already at the training size, produced by the same decode-and-resize
function the serving signature runs, so training decodes them cheaply and sees exactly what
a served model sees. Preprocessing streams: ingest's image packs are fetched with a few large
reads (medkfp.packs), threads take each image from its pack, a tf.data parallel map runs the
decode, resize and PNG encode on every core, and records are written into shards of bounded
size as they come, so memory does not grow with the dataset.
Each split's examples are shuffled (seeded) before sharding, so a shard mixes classes and
training's shuffle buffer does not see one class at a time.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import tensorflow as tf

from medkfp import vocab
from medkfp.components.preprocess.split import groups_across_splits, split_examples
from medkfp.errors import InvalidInputError
from medkfp.imaging import decode_and_resize
from medkfp.packs import decodable_image, pack_reader
from medkfp.parallel import DEFAULT_WORKERS, bounded_map
from medkfp.shards import make_example
from medkfp.store import open_store
from medkfp.tables import read_manifest
from medkfp.tfdata import without_autotune

# Room a serialized tf.train.Example needs beside its PNG bytes (id, label, framing).
RECORD_OVERHEAD = 512
PNG_COMPRESSION = 1  # zlib level of the shard PNGs
FETCH_WINDOW = 64  # images converted ahead of the writer: bounds memory, keeps the cores busy


def records_per_shard(image_size: int, max_records: int, max_bytes: int) -> int:
    """Records per shard so a shard never exceeds max_bytes.

    A PNG of an RGB image is at most its raw size plus a small header (deflate's stored
    blocks bound the worst case), so size x size x 3 plus overhead bounds a record.
    """
    worst_record = image_size * image_size * 3 + RECORD_OVERHEAD + image_size * 8
    return max(1, min(max_records, max_bytes // worst_record))


def preprocess(
    ingest_summary: dict,
    image_size: int,
    test_fraction: float = 0.2,
    val_fraction: float = 0.2,
    seed: int = 0,
    shard_max_records: int = vocab.SHARD_MAX_RECORDS,
    shard_max_bytes: int = vocab.SHARD_MAX_BYTES,
    workers: int = DEFAULT_WORKERS,
) -> dict:
    """Split the ingested images and write resized TFRecord shards per split to the store.

    Returns the dataset summary: image size, class names, the examples CSV (id, label,
    split, group), the shard manifest's key, and per split its shard keys, count, class
    counts and shard files (key, uri, count, bytes, sha256, class_counts).
    Raises ValueError for a bad image size or fraction, or a class too small to split.
    """
    if image_size < 16:
        raise InvalidInputError(f"--image-size must be at least 16 pixels, got {image_size}")
    store = open_store(ingest_summary["store"])
    run_id = ingest_summary["run_id"]
    class_names = ingest_summary["class_names"]
    manifest = read_manifest(ingest_summary)
    # An image without a group (no patient or film pair known) is its own group.
    manifest["group"] = manifest["group"].where(manifest["group"] != "", manifest["id"])
    manifest["split"] = split_examples(
        manifest["label"], test_fraction, val_fraction, seed, groups=manifest["group"]
    )
    examples_key = vocab.run_key(run_id, "preprocess", "examples.csv")
    store.put_text(examples_key, manifest[["id", "label", "split", "group"]].to_csv(index=False))

    per_shard = records_per_shard(image_size, shard_max_records, shard_max_bytes)
    ordered = {
        split: manifest[manifest["split"] == split].sample(frac=1.0, random_state=seed)
        for split in vocab.SPLITS
    }
    with (
        pack_reader(store, manifest["pack"]) as read,
        contextlib.closing(_ShardWriter(store, run_id, class_names, image_size, workers, read)) as writer,
    ):
        # One stream over every split (no drain between splits), cut into each split's
        # shards in order.
        records = writer.records(pd.concat(list(ordered.values())))
        splits = {
            split: writer.write_split(split, ordered[split], per_shard, records) for split in vocab.SPLITS
        }
    summary = {
        "dataset": ingest_summary["dataset"],
        "run_id": run_id,
        "store": store.uri,
        "class_names": class_names,
        "image_size": image_size,
        "examples_key": examples_key,
        "seed": seed,
        "fractions": {"test": test_fraction, "val": val_fraction},
        "splits": splits,
        "leakage": {
            "groups_across_splits": groups_across_splits(manifest["group"], manifest["split"]),
            "groups": int((manifest["group"].value_counts() > 1).sum()),
        },
    }
    summary["shards_key"] = vocab.run_key(run_id, "preprocess", "shards.json")
    store.put_json(summary["shards_key"], summary)
    return summary


class _ShardWriter:
    """Converts a split's images and writes them as shards.

    A finished shard is uploaded in a background thread while the next one is written (at
    most one upload at a time, so at most two shards are on local disk): on an object store
    the writer would otherwise wait about 0.2 s per shard, and the conversion with it.
    close() waits for the last upload and raises its error, if any.
    """

    def __init__(self, store, run_id: str, class_names: list[str], image_size: int, workers: int, read):
        self.store = store
        self.run_id = run_id
        self.class_names = class_names
        self.label_index = {name: i for i, name in enumerate(class_names)}
        self.workers = workers
        self.read = read  # read(pack, offset, length) -> an image's bytes (medkfp.packs)
        self.resize_png = resize_png_fn(image_size)
        self._folder = tempfile.TemporaryDirectory(prefix="medkfp-shards-")
        self._uploader = ThreadPoolExecutor(1, thread_name_prefix="shard-upload")
        self._upload: Future | None = None

    def close(self) -> None:
        try:
            self._wait_for_upload()
        finally:
            self._uploader.shutdown()
            self._folder.cleanup()

    def _wait_for_upload(self) -> None:
        if self._upload is not None:
            upload, self._upload = self._upload, None
            upload.result()

    def _put_and_remove(self, key: str, path: Path) -> None:
        try:
            self.store.put_file(key, path)
        finally:
            path.unlink()

    def write_split(self, split: str, rows: pd.DataFrame, per_shard: int, records: Iterator[bytes]) -> dict:
        """Write `rows` as the split's shards, taking their records from `records` in order."""
        total = max(1, -(-len(rows) // per_shard))
        files = [
            self._write_shard(
                vocab.shard_key(self.run_id, split, i, total),
                rows.iloc[i * per_shard : (i + 1) * per_shard],
                records,
            )
            for i in range(total)
        ]
        counts = rows["label"].value_counts().reindex(self.class_names, fill_value=0)
        return {
            "shards": [f["key"] for f in files],
            "count": len(rows),
            "class_counts": {c: int(n) for c, n in counts.items()},
            "shard_files": files,
        }

    def records(self, rows: pd.DataFrame) -> Iterator[bytes]:
        """Serialized tf.train.Examples of `rows`, in order.

        Worker threads read a bounded window of images ahead (from the packs, converted
        where their format needs it) and a tf.data map converts them on every core.
        """
        image_of = lambda row: decodable_image(self.read, row)  # noqa: E731
        images = bounded_map(image_of, rows.itertuples(), self.workers, window=FETCH_WINDOW)
        pngs = converted(images, self.resize_png, FETCH_WINDOW)
        for row, png in zip(rows.itertuples(), pngs):
            yield make_example(png, self.label_index[row.label], row.id).SerializeToString()

    def _write_shard(self, key: str, rows: pd.DataFrame, records: Iterator[bytes]) -> dict:
        path = Path(self._folder.name) / key.rsplit("/", 1)[-1]
        with tf.io.TFRecordWriter(str(path)) as writer:
            for _, record in zip(range(len(rows)), records):
                writer.write(record)
        digest, size = _sha256(path)
        self._wait_for_upload()
        self._upload = self._uploader.submit(self._put_and_remove, key, path)
        return {
            "key": key,
            "uri": self.store.uri_for(key),
            "count": len(rows),
            "bytes": size,
            "sha256": digest,
            "class_counts": dict(Counter(rows["label"])),
        }


def resize_png_fn(image_size: int):
    """The tf.function preprocessing maps over encoded images: decode_and_resize, then PNG."""

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def resize_png(data):
        # Fast deflate: at the default level PNG encoding takes ~5x longer than at level 1
        # (it dominated preprocessing) for shards only ~15% smaller; pixels are the same.
        return tf.io.encode_png(decode_and_resize(data, image_size), compression=PNG_COMPRESSION)

    return resize_png


def converted(images: Iterator[bytes], convert, window: int) -> Iterator[bytes]:
    """convert(image) of each of `images`, in order, from a tf.data parallel map.

    The map runs one call per core with no Python between the ops (a thread per core calling
    the same tf.function was about a fifth slower here), with autotuning off (medkfp.tfdata).
    Images enter `window` at a time, so memory stays bounded. An exception raised while
    taking the images (a pack shorter than the manifest says) is raised here as it was,
    after the images before it.
    """
    failure: list[BaseException] = []

    def windows() -> Iterator[list[bytes]]:
        chunk: list[bytes] = []
        try:
            for image in images:
                chunk.append(image)
                if len(chunk) == window:
                    yield chunk
                    chunk = []
        except Exception as e:  # noqa: BLE001 - re-raised below, outside tf.data
            failure.append(e)
        if chunk:
            yield chunk

    ds = tf.data.Dataset.from_generator(windows, output_signature=tf.TensorSpec([None], tf.string))
    ds = ds.unbatch().map(convert, num_parallel_calls=tf.data.AUTOTUNE)  # one call per core
    yield from without_autotune(ds.prefetch(window)).as_numpy_iterator()
    if failure:
        raise failure[0]


def _sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size
