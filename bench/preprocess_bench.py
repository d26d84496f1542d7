"""Preprocess and ingest-upload throughput, each beside its measured limit, and peak memory at N and 8N.

Builds synthetic COVID-19 Radiography sets (299 px PNGs in the Kaggle layout) of two sizes and
ingests them into a local store and, through the loopback S3 server (moto's), into an S3
store. Then, per size and store, a fresh Python process runs the preprocess step alone
(299 px PNGs -> 224 px shards) and reports its time and peak resident memory (getrusage).

The limits, measured in the same run on the same files:
- preprocess: the same decode + resize + PNG encode (the step's own tf.function) of the
  same files, read from local disk, nothing else: no store, no shards; the faster of a
  `tf.data` parallel map and a thread per core (the fastest ways to do that work found here;
  PIL in one process per core is slower);
- ingest upload: bare parallel PUTs of the same bytes to the same S3 server, one object per
  image (16 threads), with no scan and no decode check; the sequential PUT rate is shown
  beside it. Ingest itself stores packs (medkfp.packs), a few large objects, so it can beat
  this bound although it also reads and checks every file.

Streaming keeps the peak flat: 8x the images should need at most 1.2x the peak memory.
Preprocess reads ingest's packs, a few large objects from either store. Writes
bench-out/preprocess.json ({images_per_s, limit_images_per_s, ratio_to_limit,
peak_rss_ratio_8x} for the local store, the same per store, and the ingest uploads).

    .venv/bin/python bench/preprocess_bench.py [--sizes 400,3200] [--image-size 224] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from medkfp import vocab

BASE_IMAGES = 1000  # drawn by synth_covid; bigger sets are tweaked copies of these
RUN = "bench"
DEFAULT_JSON = "bench-out/preprocess.json"


def build_dataset(base: Path, out: Path, n: int) -> None:
    """n distinct images in the COVID layout: base image i % 1000 with pixel (0, i // 1000) bumped."""
    per_class = [sorted(base.glob(f"{vocab.COVID_ROOT}/{c}/images/*.png")) for c in vocab.COVID_CLASSES]
    sources = [p for row in zip(*per_class) for p in row]  # round-robin: every prefix has all classes
    for i in range(n):
        src = sources[i % len(sources)]
        name = src.parent.parent.name
        dest = out / vocab.COVID_ROOT / name / "images" / f"{name}-{i + 1}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if i < len(sources):
            shutil.copyfile(src, dest)
            continue
        pixels = np.array(Image.open(src))
        pixels[0, i // len(sources)] ^= 1  # distinct content, so no duplicate groups
        Image.fromarray(pixels).save(dest)


def ingest_dataset(folder: Path, store_uri: str, summary_path: Path) -> dict:
    """Ingest `folder` into the store; writes the summary for the child, returns its timing."""
    from medkfp.components.ingest.logic import ingest

    start = time.perf_counter()
    summary = ingest(vocab.COVID, str(folder), store_uri, RUN)
    seconds = time.perf_counter() - start
    summary_path.write_text(json.dumps(summary))
    images = summary["counts"]["accepted"]
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds}


def measure(summary_path: str, image_size: int) -> dict:
    """Run in the child process: preprocess once, return time and peaks."""
    import resource

    from medkfp.components.preprocess.logic import preprocess

    summary = json.loads(Path(summary_path).read_text())
    start = time.perf_counter()
    result = preprocess(summary, image_size)
    seconds = time.perf_counter() - start
    images = sum(s["count"] for s in result["splits"].values())
    return {
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "shards": sum(len(s["shards"]) for s in result["splits"].values()),
    }


def measure_limit(folder: str, image_size: int) -> dict:
    """Run in the child process: the step's decode + resize + encode of the same image files
    (the source folder's), nothing else, done two ways; the faster is the limit.

    The two ways: a tf.data parallel map over the files, and a thread per core calling the
    same tf.function on each file's bytes; the limit is the better one. The tf.data map runs
    with autotuning off: with it on, the end of the pass was held up for seconds in about one
    run in three (medkfp.tfdata), which had put tf.data at 0.6x the threads in those runs.
    """
    import tensorflow as tf

    from medkfp.components.preprocess.logic import resize_png_fn
    from medkfp.parallel import bounded_map
    from medkfp.tfdata import without_autotune

    files = sorted(str(p) for p in Path(folder).rglob("*.png"))
    resize_png = resize_png_fn(image_size)

    def in_tf_data() -> int:
        ds = tf.data.Dataset.from_tensor_slices(files)
        ds = ds.map(lambda path: resize_png(tf.io.read_file(path)), num_parallel_calls=tf.data.AUTOTUNE)
        return sum(1 for _ in without_autotune(ds.prefetch(tf.data.AUTOTUNE)).as_numpy_iterator())

    def in_threads() -> int:
        convert = lambda path: resize_png(tf.constant(Path(path).read_bytes())).numpy()  # noqa: E731
        return sum(1 for _ in bounded_map(convert, files, len(os.sched_getaffinity(0))))

    rates = {}
    for name, method in (("tf_data", in_tf_data), ("threads", in_threads)):
        start = time.perf_counter()
        count = method()
        rates[name] = count / (time.perf_counter() - start)
    best = max(rates, key=rates.get)
    return {"images": len(files), "images_per_s": rates[best], "method": best, "rates": rates}


def bare_uploads(folder: Path, store_uri: str, workers: int) -> dict:
    """PUT every image's bytes to the store with `workers` threads; images/s."""
    from medkfp.parallel import upload_all
    from medkfp.store import open_store

    store = open_store(store_uri)
    files = sorted(folder.rglob("*.png"))
    blobs = [(f"bare/{i}.png", f.read_bytes()) for i, f in enumerate(files)]
    start = time.perf_counter()
    upload_all(store.put_bytes, blobs, workers=workers)
    seconds = time.perf_counter() - start
    return {
        "images": len(blobs),
        "seconds": seconds,
        "images_per_s": len(blobs) / seconds,
        "workers": workers,
    }


def run_child(mode: str, arg: str, image_size: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, mode, arg, "--image-size", str(image_size)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def store_figures(runs: dict[int, dict], limits: dict[int, dict]) -> dict:
    """Headline figures of one store: the largest set's throughput against its limit, peak ratio."""
    small, large = min(runs), max(runs)
    return {
        "images_per_s": runs[large]["images_per_s"],
        "limit_images_per_s": limits[large]["images_per_s"],
        "ratio_to_limit": runs[large]["images_per_s"] / limits[large]["images_per_s"],
        "peak_rss_ratio_8x": runs[large]["peak_rss_mib"] / runs[small]["peak_rss_mib"],
        "images_ratio": large / small,
        "runs": {
            str(n): {
                **runs[n],
                "limit_images_per_s": limits[n]["images_per_s"],
                "limit_method": limits[n]["method"],
                "limit_rates": limits[n]["rates"],
            }
            for n in sorted(runs)
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="400,3200", help="two dataset sizes, comma-separated")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--stores", default="local,s3", help="local, s3 or both")
    parser.add_argument("--workdir", help="keep data here (default: a temporary folder)")
    parser.add_argument("--json", default=DEFAULT_JSON, help=f"write the figures here ({DEFAULT_JSON})")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--limit-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.image_size)))
        return 0
    if args.limit_child:
        print(json.dumps(measure_limit(args.limit_child, args.image_size)))
        return 0

    from medkfp.s3server import loopback_s3
    from medkfp.synth import synth_covid

    sizes = sorted(int(s) for s in args.sizes.split(","))
    stores = [s.strip() for s in args.stores.split(",")]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="medkfp-bench-"))
    base = work / "base"
    if not base.exists():
        synth_covid(base, per_class=BASE_IMAGES // 4, size=299, progress=sys.stderr.isatty())
    report: dict = {"image_size": args.image_size, "cores": len(os.sched_getaffinity(0)), "stores": {}}
    limits, local_runs = {}, {}
    for n in sizes:
        print(f"building and ingesting {n} images into a local store ...", file=sys.stderr)
        for stale in (work / f"set-{n}", work / f"store-{n}"):
            shutil.rmtree(stale, ignore_errors=True)
        build_dataset(base, work / f"set-{n}", n)
        summary_path = work / f"summary-local-{n}.json"
        ingest_dataset(work / f"set-{n}", str(work / f"store-{n}"), summary_path)
        # The limit and the step back to back, on the same files, in fresh processes.
        limits[n] = run_child("--limit-child", str(work / f"set-{n}"), args.image_size)
        if "local" in stores:
            local_runs[n] = run_child("--child", str(summary_path), args.image_size)
    if local_runs:
        report["stores"]["local"] = store_figures(local_runs, limits)
    if "s3" in stores:
        with loopback_s3():
            s3_runs, s3_limits, uploads = {}, {}, {}
            for n in sizes:
                print(f"ingesting {n} images through the loopback S3 server ...", file=sys.stderr)
                summary_path = work / f"summary-s3-{n}.json"
                ingested = ingest_dataset(work / f"set-{n}", f"s3://bench-{n}", summary_path)
                bare = bare_uploads(work / f"set-{n}", f"s3://bench-bare-{n}", 16)
                uploads[n] = {"ingest": ingested, "bare_parallel_put": bare}
                # Each run beside its own limit, measured just before it: a neighbour's load
                # changes from minute to minute on a shared machine.
                s3_limits[n] = run_child("--limit-child", str(work / f"set-{n}"), args.image_size)
                s3_runs[n] = run_child("--child", str(summary_path), args.image_size)
            largest = max(sizes)
            sequential = bare_uploads(work / f"set-{min(sizes)}", "s3://bench-sequential", 1)
        report["stores"]["s3"] = store_figures(s3_runs, s3_limits)
        report["ingest_upload"] = {
            "images_per_s": uploads[largest]["ingest"]["images_per_s"],
            "limit_images_per_s": uploads[largest]["bare_parallel_put"]["images_per_s"],
            "ratio_to_limit": uploads[largest]["ingest"]["images_per_s"]
            / uploads[largest]["bare_parallel_put"]["images_per_s"],
            "sequential_put_images_per_s": sequential["images_per_s"],
            "runs": {str(n): uploads[n] for n in sizes},
        }
    headline = report["stores"].get("local") or report["stores"]["s3"]
    for key in ("images_per_s", "limit_images_per_s", "ratio_to_limit", "peak_rss_ratio_8x"):
        report[key] = headline[key]
    print(table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def table(report: dict) -> str:
    lines = [
        f"preprocess: 299 px PNGs -> {report['image_size']} px shards ({report['cores']} CPU cores); "
        "limit = the same decode + resize + PNG encode of the files, the faster of a tf.data parallel "
        "map and a thread per core"
    ]
    lines.append(
        f"{'store':>6} {'images':>7} {'shards':>6} {'seconds':>8} {'images/s':>9} {'limit/s':>8} "
        f"{'ratio':>6} {'peak RSS MiB':>13}"
    )
    for name, figures in report["stores"].items():
        for n, r in figures["runs"].items():
            ratio = r["images_per_s"] / r["limit_images_per_s"]
            lines.append(
                f"{name:>6} {n:>7} {r['shards']:>6} {r['seconds']:>8.1f} {r['images_per_s']:>9.0f} "
                f"{r['limit_images_per_s']:>8.0f} {ratio:>6.2f} {r['peak_rss_mib']:>13.0f}"
            )
        fig = figures
        lines.append(
            f"{name:>6}: {fig['images_per_s']:.0f} images/s vs limit {fig['limit_images_per_s']:.0f}"
            f" = {fig['ratio_to_limit']:.2f}x (target >= 0.8x); peak RSS "
            f"x{fig['peak_rss_ratio_8x']:.2f} for x{fig['images_ratio']:.0f} the images "
            "(target <= 1.2x)"
        )
    if "ingest_upload" in report:
        u = report["ingest_upload"]
        lines.append(
            f"ingest through S3: {u['images_per_s']:.0f} images/s vs bare parallel PUT "
            f"{u['limit_images_per_s']:.0f} images/s = {u['ratio_to_limit']:.2f}x "
            f"(sequential PUT: {u['sequential_put_images_per_s']:.0f} images/s)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
