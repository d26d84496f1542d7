"""`make demo`: the whole flow on one machine through a loopback S3 server.

loopback S3 -> synthetic covid19-radiography set -> `medkfp run` (quick grid, kfp.local)
-> `medkfp serve` -> `medkfp predict` on images the run never saw. Every process the demo
starts is stopped when it ends, whether it passes or fails.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from medkfp import vocab
from medkfp.s3server import free_port, loopback_s3

OUT = Path("demo-out")
# Imbalanced like the study's data (COVID 17%, Lung_Opacity 28%, Normal 48%, Viral Pneumonia 6%),
# with the smallest class kept large enough to be learned.
COUNTS = "60,100,160,40"
MIN_MACRO_F1 = 0.9
UNSEEN_PER_CLASS = 3
SOURCE_SIZE = 128
IMAGE_SIZE = 64
EPOCHS = 15
SERVER_START_TIMEOUT = 120.0


def medkfp(*args: str, shown: str | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run the medkfp CLI as a user would, echoing the command (quoted as a shell needs it,
    or as `shown` when a long argument list is better told than listed)."""
    print(f"\n$ medkfp {shown or shlex.join(args)}", flush=True)
    return subprocess.run([sys.executable, "-m", "medkfp.cli", *args], check=True, **kwargs)


def wait_for_model(server: str, model: str, process: subprocess.Popen) -> None:
    from medkfp.cli import tensorflow_loaded

    with tensorflow_loaded(verbose=False):  # the client's protos load TensorFlow: no C++ lines
        from medkfp.serving.client import ServingError, model_status

    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"medkfp serve exited with status {process.returncode}")
        try:
            if model_status(server, model, timeout=2.0):
                return
        except ServingError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"model {model} was not served at {server} within {SERVER_START_TIMEOUT:.0f} s")


def unseen_images(folder: Path) -> list[tuple[Path, str]]:
    """(image, true class) for a synthetic set made with another seed than the training set."""
    root = folder / vocab.COVID_ROOT
    return [
        (path, name)
        for name in vocab.COVID_CLASSES
        for path in sorted((root / name / "images").glob("*.png"))
    ]


def main() -> int:
    started = time.monotonic()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    with loopback_s3() as env:
        print(f"loopback S3 server at {env['AWS_ENDPOINT_URL_S3']} (moto)")
        medkfp(
            "synth",
            vocab.COVID,
            "--out",
            str(OUT / "data"),
            "--counts",
            COUNTS,
            "--size",
            str(SOURCE_SIZE),
            "--seed",
            "1",
        )
        medkfp(
            "synth",
            vocab.COVID,
            "--out",
            str(OUT / "unseen"),
            "--per-class",
            str(UNSEEN_PER_CLASS),
            "--size",
            str(SOURCE_SIZE),
            "--seed",
            "777",
        )
        medkfp(
            "run",
            "--dataset",
            vocab.COVID,
            "--source",
            str(OUT / "data"),
            "--epochs",
            str(EPOCHS),
            "--image-size",
            str(IMAGE_SIZE),
            "--summary",
            str(OUT / "summary.json"),
            "--pipeline-root",
            str(OUT / "kfp"),
        )
        summary = json.loads((OUT / "summary.json").read_text())
        server = f"127.0.0.1:{free_port()}"
        print(f"\n$ medkfp serve --port {server.split(':')[1]}  (in the background)")
        serve = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "medkfp.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                server.split(":")[1],
            ],
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            stdout=open(OUT / "serve.log", "w"),
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_model(server, vocab.COVID, serve)
            images = unseen_images(OUT / "unseen")
            result = medkfp(
                "predict",
                "--server",
                server,
                "--model",
                vocab.COVID,
                "--json",
                *[str(p) for p, _ in images],
                shown=f"predict --server {server} --model {vocab.COVID} --json "
                f"<the {len(images)} images under {OUT / 'unseen'}>",
                capture_output=True,
                text=True,
            )
            predictions = json.loads(result.stdout)["predictions"]
        finally:
            serve.terminate()
            serve.wait(timeout=30)

    correct = 0
    print(f"\npredictions of {vocab.COVID} v{summary['pushed']['version']} on unseen images:")
    for (path, truth), p in zip(images, predictions):
        correct += p["class"] == truth
        mark = "ok " if p["class"] == truth else "MISS"
        print(f"  {mark} {path.name:<28} -> {p['class']:<16} (p={max(p['probabilities']):.3f})")
    best = next(c for c in summary["candidates"] if c["name"] == summary["selected"])
    print(
        f"\npushed model: {summary['selected']}, test macro-F1 {best['metrics']['macro_f1']:.3f}; "
        f"unseen images right: {correct}/{len(images)}"
    )
    print(f"demo finished in {time.monotonic() - started:.0f} s; outputs in {OUT}/")
    passed = best["metrics"]["macro_f1"] >= MIN_MACRO_F1 and correct >= 0.75 * len(images)
    if not passed:
        print(f"demo FAILED: needs test macro-F1 >= {MIN_MACRO_F1} and 3/4 of unseen images right")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
