"""Does every quick-grid candidate converge? Macro-F1 per dataset x seed x candidate.

Three datasets, each run through the real steps (ingest, preprocess, balance, train,
evaluate) in this process, for every candidate of vocab.GRIDS["quick"] and three seeds
(the seed drives the split, the balancing draw and training):

  demo       the data of `make demo`: synthetic covid19-radiography, imbalanced
             (medkfp.demo.COUNTS), trained as the demo trains it (its epochs and size)
  balanced   synthetic covid19-radiography, 40 images per class, 64 px
  digits     scikit-learn's handwritten digits (shipped with scikit-learn) written as an
             imbalanced imagefolder, 150 down to 16 images per class

Prints the table, the slowest dataset's wall time per seed (the quick grid trains in the
demo's time budget), and writes bench-out/convergence.json. CPU heavy: run it niced.

    nice -n 10 .venv/bin/python bench/convergence_bench.py [--seeds 0,1,2] [--datasets demo,balanced,digits]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from medkfp import demo, vocab
from medkfp.components.balance.logic import balance
from medkfp.components.evaluate.logic import evaluate
from medkfp.components.grid.logic import expand_grid
from medkfp.components.ingest.logic import ingest
from medkfp.components.preprocess.logic import preprocess
from medkfp.components.train.logic import train
from medkfp.synth import synth_covid

OUT = Path("bench-out")
TARGET = 0.85
DIGITS_COUNTS = (150, 120, 96, 76, 60, 48, 38, 30, 24, 16)  # geometric, ~0.8 per class
DIGITS_PX = 32
# name -> (dataset kind, image size, epochs; 0: the grid's own)
CASES = {
    "demo": (vocab.COVID, demo.IMAGE_SIZE, demo.EPOCHS),
    "balanced": (vocab.COVID, 64, 0),
    "digits": (vocab.IMAGEFOLDER, DIGITS_PX, 0),
}


def write_digits(out: Path, counts=DIGITS_COUNTS, size: int = DIGITS_PX) -> Path:
    """scikit-learn's 8x8 digits as `out/digits/<d>/<n>.png`, `counts[d]` images of digit d,
    upscaled to `size` px grayscale. Returns the imagefolder."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = out / "digits"
    for digit, count in enumerate(counts):
        (folder / str(digit)).mkdir(parents=True, exist_ok=True)
        images = digits.images[digits.target == digit][:count]
        for n, image in enumerate(images):
            pixels = np.round(image / 16.0 * 255).astype(np.uint8)
            image = Image.fromarray(pixels, "L").resize((size, size), Image.BILINEAR)
            image.save(folder / str(digit) / f"{n}.png")
    return folder


def write_sources(root: Path, names) -> dict[str, Path]:
    """The source folder of each named case, written under `root`."""
    sources = {}
    if "demo" in names:
        counts = [int(n) for n in demo.COUNTS.split(",")]
        synth_covid(root / "demo", counts=counts, size=demo.SOURCE_SIZE, seed=1)
        sources["demo"] = root / "demo"
    if "balanced" in names:
        synth_covid(root / "balanced", per_class=40, size=64, seed=1)
        sources["balanced"] = root / "balanced"
    if "digits" in names:
        sources["digits"] = write_digits(root)
    return sources


def run_case(name: str, source: Path, seed: int, work: Path) -> dict:
    """Every quick-grid candidate on one dataset and seed: {candidate: {macro_f1, ...}}."""
    dataset, size, epochs = CASES[name]
    store = str(work / f"store-{name}-{seed}")
    run_id = f"bench-{name}-{seed}"
    ingested = ingest(dataset, str(source), store, run_id)
    prepared = preprocess(ingested, size, seed=seed)
    results = {}
    for candidate in expand_grid("quick", dataset, epochs=epochs, image_size=size):
        started = time.monotonic()
        balanced = balance(prepared, candidate["balancing"], seed=seed)
        trained = train(prepared, balanced, candidate, seed=seed)
        metrics = evaluate(prepared, trained)["metrics"]
        results[candidate["name"]] = {
            "macro_f1": metrics["macro_f1"],
            "macro_f1_ci": metrics["ci"]["macro_f1"],
            "balanced_accuracy": metrics["balanced_accuracy"],
            "ece": metrics["calibration"]["ece"],
            "ece_uncalibrated": metrics["calibration"]["ece_uncalibrated"],
            "temperature": metrics["calibration"]["temperature"],
            "epochs_run": trained["epochs_run"],
            "steps_per_epoch": trained["steps_per_epoch"],
            "seconds": round(time.monotonic() - started, 1),
        }
    return results


def print_table(rows: list[dict]) -> None:
    print(
        f"\n{'dataset':<9} {'seed':>4}  {'candidate':<23} {'macro-F1':>8}  {'95% CI':<13} "
        f"{'epochs':>6} {'steps':>5} {'ECE':>5} {'s':>5}"
    )
    for r in rows:
        lo, hi = r["macro_f1_ci"]
        mark = "" if r["macro_f1"] >= TARGET else "  < target"
        print(
            f"{r['dataset']:<9} {r['seed']:>4}  {r['candidate']:<23} {r['macro_f1']:>8.3f}  "
            f"[{lo:.2f}, {hi:.2f}]  {r['epochs_run']:>6} {r['steps_per_epoch']:>5} "
            f"{r['ece']:>5.3f} {r['seconds']:>5.0f}{mark}"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--datasets", default=",".join(CASES), help=f"any of {', '.join(CASES)}")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [n for n in args.datasets.split(",") if n]
    unknown = set(names) - set(CASES)
    if unknown:
        parser.error(f"unknown dataset(s) {', '.join(sorted(unknown))}: use {', '.join(CASES)}")
    rows, wall = [], {}
    with tempfile.TemporaryDirectory(prefix="medkfp-bench-") as tmp:
        tmp = Path(tmp)
        sources = write_sources(tmp / "sources", names)
        for name in names:
            for seed in seeds:
                started = time.monotonic()
                scores = run_case(name, sources[name], seed, tmp)
                for candidate, r in scores.items():
                    rows.append({"dataset": name, "seed": seed, "candidate": candidate, **r})
                wall[f"{name}/{seed}"] = round(time.monotonic() - started, 1)
                f1 = ", ".join(f"{c} {r['macro_f1']:.3f}" for c, r in scores.items())
                print(
                    f"{name} seed {seed}: quick grid trained and scored in {wall[f'{name}/{seed}']:.0f} s;"
                    f" macro-F1 {f1}",
                    flush=True,
                )
    print_table(rows)
    worst = min(r["macro_f1"] for r in rows)
    passed = worst >= TARGET
    print(
        f"\nlowest macro-F1 {worst:.3f} (target {TARGET}); slowest grid {max(wall.values()):.0f} s: "
        f"{'PASS' if passed else 'FAIL'}"
    )
    OUT.mkdir(exist_ok=True)
    (OUT / "convergence.json").write_text(
        json.dumps(
            {
                "target": TARGET,
                "grid": [c.to_dict() for c in vocab.GRIDS["quick"]],
                "seeds": seeds,
                "rows": rows,
                "grid_seconds": wall,
                "lowest_macro_f1": worst,
                "passed": passed,
            },
            indent=2,
        )
    )
    print(f"wrote {OUT / 'convergence.json'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
