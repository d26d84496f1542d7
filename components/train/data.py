"""The train step's input pipeline: batched parse, parallel decode and flip, image cache.

Per-example Python-level work is what kept the old pipeline at 0.6x of a bare parallel decode:
here records are parsed a batch at a time (`tf.io.parse_example`), balanced with one
`tf.repeat` per batch, and decoded and flipped in a parallel map. Batches stay uint8: the
model's float32 input casts them where the model runs (see images_and_labels).
The decoded-image cache is chosen from the split's size and the memory and disk at hand: when
the decoded split fits in memory (or else on local disk) the decoded images are cached after
the first pass, so later epochs skip PNG decoding altogether.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import tensorflow as tf

from medkfp.shards import FEATURES
from medkfp.tfdata import without_autotune

SHUFFLE_BUFFER = 4096
# Records parsed (and balanced) per tf.io.parse_example call. Each call allocates its
# batch's encoded images, and tf.repeat a copy: at 256 records (15 MB of PNGs) the buffers
# came fresh from the kernel each time, 21-30 page faults per image against none for a
# bare decode, and the pipeline ran at 0.69-0.89x of it; at 32, 7-14 faults and 0.90x.
PARSE_BATCH = 32
# Share of the available memory / free local disk the decoded cache may take: the model,
# the optimizer and TensorFlow's own buffers need the rest.
MEMORY_FRACTION = 0.5
DISK_FRACTION = 0.8
CACHES = ("auto", "memory", "disk", "none")


def available_memory_bytes() -> int:
    """Memory this process can still take: the host's MemAvailable, bounded by the cgroup's
    limit minus its usage (a pod's memory limit is what the kernel enforces, not the node's)."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # "max", or v1's "no limit" sentinel
            available = min(available, max(0, int(limit) - usage))
        break
    return available


def choose_cache(
    examples: int,
    image_size: int,
    cache_dir: str | Path | None,
    cache: str = "auto",
    memory_bytes: int | None = None,
    disk_bytes: int | None = None,
) -> dict:
    """Where to cache the decoded train split: the choice and the figures it was made from.

    Args:
      examples: distinct images in the split (before balancing repeats them).
      cache: "auto" (memory if the decoded split plus the shuffle buffer fit in
        MEMORY_FRACTION of the available memory, else disk if it fits in DISK_FRACTION of
        cache_dir's free space, else none), or "memory", "disk", "none" to force one.
      memory_bytes, disk_bytes: the available memory and free disk (default: measured).
    Returns {"cache", "decoded_bytes", "available_memory_bytes", "free_disk_bytes", "reason"}.
    Raises ValueError for an unknown `cache`.
    """
    if cache not in CACHES:
        raise ValueError(f"unknown input cache {cache!r}: use one of {', '.join(CACHES)}")
    image_bytes = image_size * image_size * 3
    decoded = examples * image_bytes
    shuffle = min(SHUFFLE_BUFFER, examples) * image_bytes  # the buffer holds decoded images too
    memory = available_memory_bytes() if memory_bytes is None else memory_bytes
    if disk_bytes is None:
        disk_bytes = shutil.disk_usage(cache_dir).free if cache_dir else 0
    info = {"decoded_bytes": decoded, "available_memory_bytes": memory, "free_disk_bytes": disk_bytes}
    if cache != "auto":
        choice, reason = cache, "asked for"
    elif decoded + shuffle <= MEMORY_FRACTION * memory:
        choice = "memory"
        reason = f"decoded split and shuffle buffer fit in {MEMORY_FRACTION:.0%} of the free memory"
    elif cache_dir and decoded <= DISK_FRACTION * disk_bytes:
        choice, reason = "disk", f"decoded split fits in {DISK_FRACTION:.0%} of the local disk, not in memory"
    else:
        choice, reason = "none", "decoded split fits neither in memory nor on local disk: decoded every epoch"
    return {"cache": choice, **info, "reason": reason}


def _decode(image_size: int):
    def decode(example):
        image = tf.io.decode_png(example["image"], channels=3)
        return {**example, "image": tf.ensure_shape(image, (image_size, image_size, 3))}

    return decode


def _flipped(example: dict, bits: tf.Tensor) -> dict:
    """The example, mirrored left-right when the low bit of `bits` is set.

    Done per image inside a parallel map (a no-op half the time, one copy otherwise): a
    batch-wide select, or Keras's RandomFlip layer, cost more than the PNG decode itself.
    """
    image = example["image"]
    image = tf.cond(tf.math.floormod(bits, 2) == 1, lambda: tf.reverse(image, axis=[1]), lambda: image)
    return {**example, "image": image}


def train_input(
    paths: list[str],
    repeats: dict[str, int],
    image_size: int,
    batch_size: int,
    seed: int,
    repeat: bool = False,
    cache: str = "none",
    cache_dir: str | Path | None = None,
) -> tf.data.Dataset:
    """The balanced train split as (uint8 images [B, S, S, 3], int64 labels [B]) batches.

    Each example appears `repeats[id]` times per pass (0 drops it), shuffled (seeded) and
    flipped horizontally at random; endless when `repeat`. `cache` is "memory", "disk"
    (a file in cache_dir) or "none" (see choose_cache): the cache holds each distinct
    decoded image once, after the first pass.
    """
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(repeats), tf.string), tf.constant(list(repeats.values()), tf.int64)
        ),
        default_value=0,
    )
    total = int(sum(repeats.values()))
    distinct = sum(1 for n in repeats.values() if n > 0)

    def parse(records):
        ex = tf.io.parse_example(records, FEATURES)
        return {"image": ex["image"], "label": ex["label"], "count": table.lookup(ex["id"])}

    def balanced(batch):  # one tf.repeat per batch; a count of 0 drops the example
        return {k: tf.repeat(batch[k], batch["count"], axis=0) for k in ("image", "label")}

    ds = tf.data.TFRecordDataset(paths).batch(PARSE_BATCH).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    decode = _decode(image_size)
    # One random int64 per example, drawn in order, decides its flip: reproducible for a seed
    # whatever order the parallel map runs in, and different on every pass.
    bits = tf.data.Dataset.random(seed=seed)
    if cache == "none":
        ds = ds.map(balanced).unbatch()
        ds = ds.apply(tf.data.experimental.assert_cardinality(total))
        ds = ds.shuffle(SHUFFLE_BUFFER, seed=seed)  # encoded images: a cheap buffer
        if repeat:  # reshuffled on every pass; batches may then span passes
            ds = ds.repeat()
        ds = tf.data.Dataset.zip((ds, bits)).map(
            lambda ex, b: _flipped(decode(ex), b), num_parallel_calls=tf.data.AUTOTUNE
        )
    else:

        def kept(batch):
            keep = batch["count"] > 0
            return {k: tf.boolean_mask(v, keep) for k, v in batch.items()}

        ds = ds.map(kept).unbatch().map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.apply(tf.data.experimental.assert_cardinality(distinct))
        if cache == "disk":
            if not cache_dir:
                raise ValueError("a disk cache needs a local folder (cache_dir)")
            ds = ds.cache(str(Path(cache_dir) / "train-decoded"))
        else:
            ds = ds.cache()
        ds = ds.batch(PARSE_BATCH).map(balanced).unbatch()
        ds = ds.apply(tf.data.experimental.assert_cardinality(total))
        ds = ds.shuffle(min(SHUFFLE_BUFFER, max(1, total)), seed=seed)
        if repeat:
            ds = ds.repeat()
        ds = tf.data.Dataset.zip((ds, bits)).map(_flipped, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size).map(images_and_labels)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    return ds if repeat else without_autotune(ds)  # a pass that ends: medkfp.tfdata


def images_and_labels(batch: dict) -> tuple[tf.Tensor, tf.Tensor]:
    """(uint8 images, labels) of a batch, as decoded: no float cast on the host.

    A Keras functional model converts its inputs to its Input's dtype (float32) inside the
    model, so on a GPU node the cast runs on the GPU and a quarter of the bytes cross to it.
    On the host, the float copy of every batch cost about a tenth of the CPU per image
    (the PNG decode is the rest) and held the pipeline at 0.82-0.89x of a bare decode.
    """
    return batch["image"], batch["label"]


def train_pipeline(
    paths: list[str],
    repeats: dict[str, int],
    image_size: int,
    batch_size: int,
    seed: int,
    repeat: bool = False,
    cache_dir: str | Path | None = None,
    cache: str = "auto",
) -> tuple[tf.data.Dataset, dict]:
    """train_input with the cache chosen by choose_cache; returns (dataset, the summary's
    "input_pipeline" block: the choice and its figures)."""
    distinct = sum(1 for n in repeats.values() if n > 0)
    info = choose_cache(distinct, image_size, cache_dir, cache)
    ds = train_input(paths, repeats, image_size, batch_size, seed, repeat, info["cache"], cache_dir)
    return ds, {**info, "examples": distinct, "parse_batch": PARSE_BATCH}
