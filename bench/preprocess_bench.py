"""Preprocess throughput (images/s) and peak memory at two dataset sizes, and their ratios.

Builds synthetic COVID-19 Radiography sets (299 px PNGs in the Kaggle layout) of each size,
ingests them into a local store, then runs the preprocess step alone in a fresh Python
process per size and reads that process's peak resident memory (getrusage) and peak
Python heap (tracemalloc). Streaming preprocessing keeps the peak flat: the ratio of the
peaks should stay near 1 while the dataset grows 8 times.

    .venv/bin/python bench/preprocess_bench.py [--sizes 1000,8000] [--image-size 224]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from medkfp import vocab

BASE_IMAGES = 1000  # drawn by synth_covid; bigger sets are tweaked copies of these


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


def ingest_dataset(folder: Path, store: Path) -> Path:
    from medkfp.components.ingest.logic import ingest

    summary = ingest(vocab.COVID, str(folder), str(store), "bench")
    path = store / "ingest-summary.json"
    path.write_text(json.dumps(summary))
    return path


def measure(summary_path: str, image_size: int) -> dict:
    """Run in the child process: preprocess once, return time and peaks."""
    import resource
    import time
    import tracemalloc

    from medkfp.components.preprocess.logic import preprocess

    summary = json.loads(Path(summary_path).read_text())
    baseline_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    start = time.perf_counter()
    result = preprocess(summary, image_size)
    seconds = time.perf_counter() - start
    _, python_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    images = sum(s["count"] for s in result["splits"].values())
    return {
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mib": baseline_rss / 1024,
        "python_peak_mib": python_peak / 2**20,
        "shards": sum(len(s["shards"]) for s in result["splits"].values()),
    }


def run_child(summary_path: Path, image_size: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(summary_path), "--image-size", str(image_size)],
        check=True, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,8000", help="two dataset sizes, comma-separated")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workdir", help="keep data here (default: a temporary folder)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.image_size)))
        return 0

    from medkfp.synth import synth_covid

    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="medkfp-bench-"))
    base = work / "base"
    if not base.exists():
        synth_covid(base, per_class=BASE_IMAGES // 4, size=299, progress=sys.stderr.isatty())
    results = []
    for n in sizes:
        print(f"building and ingesting {n} images ...", file=sys.stderr)
        for stale in (work / f"set-{n}", work / f"store-{n}"):
            shutil.rmtree(stale, ignore_errors=True)
        build_dataset(base, work / f"set-{n}", n)
        summary_path = ingest_dataset(work / f"set-{n}", work / f"store-{n}")
        results.append(run_child(summary_path, args.image_size))
    report = {"image_size": args.image_size, "runs": results, "ratios": ratios(results)}
    print(json.dumps(report, indent=2) if args.json else table(report))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def ratios(results: list[dict]) -> dict:
    first, last = results[0], results[-1]
    keys = ("images", "images_per_s", "peak_rss_mib", "python_peak_mib")
    return {key: last[key] / first[key] for key in keys}


def table(report: dict) -> str:
    lines = [f"preprocess at {report['image_size']} px from 299 px PNGs ({os.cpu_count()} CPU cores)",
             f"{'images':>7} {'shards':>6} {'seconds':>8} {'images/s':>9} {'peak RSS MiB':>13} "
             f"{'Python peak MiB':>16}"]
    for r in report["runs"]:
        lines.append(f"{r['images']:>7} {r['shards']:>6} {r['seconds']:>8.1f} {r['images_per_s']:>9.1f} "
                     f"{r['peak_rss_mib']:>13.0f} {r['python_peak_mib']:>16.1f}")
    q = report["ratios"]
    lines.append(f"ratio (largest / smallest): images x{q['images']:.1f}, "
                 f"throughput x{q['images_per_s']:.2f}, peak RSS x{q['peak_rss_mib']:.2f}, "
                 f"Python peak x{q['python_peak_mib']:.2f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
