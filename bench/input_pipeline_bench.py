"""Training input pipeline images/s beside its limit, a bare parallel parse + decode of the same shards.

Makes 224 px train shards the way a run does (synthetic COVID-19 Radiography PNGs, ingest,
preprocess into a local store), then times, in interleaved rounds (so a neighbour's load
hits all alike), with no model attached:
- the dataset the train step fits on (components/train/data.py, no cache): batched parse,
  balancing, shuffle, parallel decode and random flip, prefetch (uint8: the model casts);
- the limit: TFRecordDataset -> parallel map (parse_single_example + decode_png) -> batch;
- past the limit: the same train dataset with the decoded images cached in memory, after
  the first pass (what the train step picks when the split fits).
Images/s per core says how many cores a GPU node needs to feed a model at a given rate.
Writes bench-out/input_pipeline.json ({images_per_s, bare_decode_images_per_s, ratio, ...}).

    .venv/bin/python bench/input_pipeline_bench.py [--images 2000] [--image-size 224] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from medkfp.cli import native_stderr_silenced  # noqa: E402

# TensorFlow's C++ start-up lines (absl, oneDNN, cuInit) stay out of the figures.
with native_stderr_silenced():
    import tensorflow as tf

    tf.config.list_physical_devices()

from medkfp import vocab  # noqa: E402

DEFAULT_JSON = "bench-out/input_pipeline.json"
BATCH = 32
FEED_TARGET = 3000  # images/s: a ResNet50 on one modern GPU trains at a few thousand


def make_shards(work: Path, images: int, image_size: int) -> tuple[list[str], dict[str, int]]:
    """Train shard paths and the balance-none repeats of a synthetic set of `images` images."""
    from medkfp.components.balance.logic import balance
    from medkfp.components.ingest.logic import ingest
    from medkfp.components.preprocess.logic import preprocess
    from medkfp.shards import download_shards
    from medkfp.store import open_store
    from medkfp.synth import synth_covid
    from medkfp.tables import read_repeats

    synth_covid(work / "data", per_class=images // 4, size=image_size, progress=sys.stderr.isatty())
    store = open_store(str(work / "store"))
    dataset = preprocess(ingest(vocab.COVID, str(work / "data"), store.uri, "bench"), image_size)
    table = read_repeats(store.uri, balance(dataset, "none"))
    (work / "shards").mkdir()
    paths = download_shards(store, dataset["splits"]["train"]["shards"], work / "shards")
    return paths, dict(zip(table["id"], table["repeat"].astype(int)))


def bare_decode(paths: list[str], image_size: int) -> tf.data.Dataset:
    from medkfp.components.train.data import FEATURES

    def parse_decode(record):
        example = tf.io.parse_single_example(record, FEATURES)
        return tf.io.decode_png(example["image"], channels=3), example["label"]

    ds = tf.data.TFRecordDataset(paths).repeat()
    return ds.map(parse_decode, num_parallel_calls=tf.data.AUTOTUNE).batch(BATCH).prefetch(tf.data.AUTOTUNE)


def rate(ds: tf.data.Dataset, batches: int, warm_up: int) -> float:
    """Images/s over `batches` batches after `warm_up` untimed ones (pipeline start, cache fill)."""
    iterator = iter(ds)
    for _ in range(warm_up):
        next(iterator)
    start = time.perf_counter()
    images = sum(int(next(iterator)[1].shape[0]) for _ in range(batches))
    return images / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="synthetic images (about 64%% train)")
    parser.add_argument("--image-size", type=int, default=224)
    # Five rounds: on a shared 2-core machine one round in three or four can come out a
    # quarter slow for one dataset or another, and a median of three then lands on it.
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--passes", type=int, default=3, help="train-split passes timed per round")
    parser.add_argument("--json", default=DEFAULT_JSON, help=f"write the figures here ({DEFAULT_JSON})")
    args = parser.parse_args(argv)

    from medkfp.components.train.data import train_input

    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="medkfp-bench-") as tmp:
        print(f"making {args.image_size} px shards of {args.images} images ...", file=sys.stderr)
        paths, repeats = make_shards(Path(tmp), args.images, args.image_size)
        examples = sum(repeats.values())
        per_pass = -(-examples // BATCH)
        batches = args.passes * per_pass

        def pipeline(cache: str) -> tf.data.Dataset:
            return train_input(paths, repeats, args.image_size, BATCH, seed=0, repeat=True, cache=cache)

        rounds: dict[str, list[float]] = {"train": [], "bare": [], "cached": []}
        for i in range(args.rounds):
            rounds["bare"].append(rate(bare_decode(paths, args.image_size), batches, 2))
            rounds["train"].append(rate(pipeline("none"), batches, 2))
            # warm-up = one whole pass, which fills the cache; then every image comes from it
            rounds["cached"].append(rate(pipeline("memory"), batches, per_pass + 1))
            print(
                f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.0f} images/s" for k, v in rounds.items()),
                file=sys.stderr,
            )
    train, bare, cached = (statistics.median(rounds[k]) for k in ("train", "bare", "cached"))
    report = {
        "images_per_s": train,
        "bare_decode_images_per_s": bare,
        "ratio": train / bare,
        "cached_images_per_s": cached,
        "cached_ratio_to_bare_decode": cached / bare,
        "cores": cores,
        "images_per_s_per_core": train / cores,
        "bare_decode_images_per_s_per_core": bare / cores,
        "cached_images_per_s_per_core": cached / cores,
        "cores_to_feed_3000_images_per_s": {
            "decoding": FEED_TARGET / (train / cores),
            "cached": FEED_TARGET / (cached / cores),
        },
        "image_size": args.image_size,
        "batch_size": BATCH,
        "train_examples": examples,
        "rounds": rounds,
    }
    print(table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0


def table(r: dict) -> str:
    feed = r["cores_to_feed_3000_images_per_s"]
    return "\n".join(
        [
            f"training input pipeline at {r['image_size']} px, batch {r['batch_size']}, no model "
            f"({r['cores']} CPU cores; median of {len(r['rounds']['train'])} interleaved rounds)",
            f"  train dataset (decoding):   {r['images_per_s']:>7.0f} images/s  vs bare parallel parse + "
            f"decode {r['bare_decode_images_per_s']:.0f} images/s = {r['ratio']:.2f}x (target >= 0.9x)",
            f"  train dataset (mem cache):  {r['cached_images_per_s']:>7.0f} images/s  = "
            f"{r['cached_ratio_to_bare_decode']:.2f}x the bare decode",
            f"  per core: decoding {r['images_per_s_per_core']:.0f}, bare decode "
            f"{r['bare_decode_images_per_s_per_core']:.0f}, cached "
            f"{r['cached_images_per_s_per_core']:.0f} images/s; cores to feed {FEED_TARGET} images/s: "
            f"{feed['decoding']:.1f} decoding, {feed['cached']:.1f} cached",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
