"""Predict latency (p50/p99) and throughput over gRPC against `medkfp serve`, vs in-process.

Exports a model with medkfp's serving signatures, publishes it to a temporary local store,
starts `medkfp serve --engine builtin` as a subprocess on loopback, and sends one encoded
PNG per request from 1 and from N concurrent clients (each over its own channel, with the
tensorflow-serving-api stubs). The baseline calls the same SavedModel's serving_default
in this process, with the same images and concurrency. Request counts and time are
bounded; nothing leaves 127.0.0.1.

    .venv/bin/python bench/predict_bench.py [--model mobilenetv2|small] [--requests 200]
                                            [--clients 4] [--image-px 256] [--json FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from medkfp import vocab  # noqa: E402
from medkfp.imaging import export_serving_model  # noqa: E402
from medkfp.model_repository import ModelRepository  # noqa: E402
from medkfp.s3server import free_port  # noqa: E402
from medkfp.serving.client import ServingError, model_status  # noqa: E402
from medkfp.store import LocalStore  # noqa: E402

MODEL = "bench"
CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
WARMUP = 10
MAX_SECONDS_PER_RUN = 60.0
START_TIMEOUT = 120.0


def build_model(kind: str, image_size: int):
    """An untrained classifier taking float32 [N, size, size, 3] in 0..255."""
    import keras

    inputs = keras.Input((image_size, image_size, 3))
    if kind == "mobilenetv2":
        x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
        x = keras.applications.MobileNetV2(
            input_shape=(image_size, image_size, 3), include_top=False, weights=None, pooling="avg"
        )(x)
    else:
        x = keras.layers.Rescaling(1 / 255.0)(inputs)
        for filters in (16, 32, 64):
            x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
            x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.GlobalMaxPooling2D()(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax")(x)
    return keras.Model(inputs, outputs)


def make_images(count: int, px: int) -> list[bytes]:
    """Grayscale PNGs, like the chest X-rays the models serve."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (px, px), dtype=np.uint8), "L").save(buffer, "PNG")
        images.append(buffer.getvalue())
    return images


def run_clients(call, images: list[bytes], clients: int, requests: int) -> dict:
    """`requests` calls (one image each) spread over `clients` threads; latency stats."""
    per_client = max(1, requests // clients)
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + MAX_SECONDS_PER_RUN

    def work(index: int) -> None:
        make_call = call()
        mine = []
        for i in range(per_client):
            if time.monotonic() > deadline:
                break
            image = images[(index * per_client + i) % len(images)]
            started = time.perf_counter()
            make_call(image)
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "throughput_rps": len(latencies) / elapsed,
    }


def grpc_caller(address: str):
    """A factory of per-thread Predict callers, each over its own channel."""

    def factory():
        channel = grpc.insecure_channel(address)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def call(image: bytes):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = MODEL
            request.inputs[vocab.INPUT_KEY].CopyFrom(tf.make_tensor_proto([image], dtype=tf.string))
            return stub.Predict(request, timeout=30)

        return call

    return factory


def local_caller(signature):
    def factory():
        return lambda image: signature(**{vocab.INPUT_KEY: tf.constant([image])})

    return factory


def start_server(store: Path, port: int, log_path: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "medkfp.cli", "serve", "--engine", "builtin", "--store", str(store),
               "--host", "127.0.0.1", "--port", str(port), "--poll", "60"]
    process = subprocess.Popen(command, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"medkfp serve exited with {process.returncode}; see {log_path}")
        try:
            if model_status(f"127.0.0.1:{port}", MODEL, timeout=2, retries=0):
                return process
        except ServingError:
            time.sleep(0.5)
    process.terminate()
    raise RuntimeError(f"medkfp serve did not serve {MODEL} within {START_TIMEOUT:.0f} s")


def benchmark(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="medkfp-bench-") as tmp:
        tmp = Path(tmp)
        export = export_serving_model(build_model(args.model, args.image_size), CLASSES, args.image_size,
                                      tmp / "export")
        ModelRepository(LocalStore(tmp / "store")).publish(MODEL, export, {"class_names": CLASSES})
        images = make_images(32, args.image_px)
        signature = tf.saved_model.load(str(export)).signatures[vocab.SIGNATURE]
        port = free_port()
        server = start_server(tmp / "store", port, tmp / "serve.log")
        try:
            results = {"model": args.model, "image_size": args.image_size, "image_px": args.image_px,
                       "runs": []}
            callers = {"grpc": grpc_caller(f"127.0.0.1:{port}"), "in-process": local_caller(signature)}
            for mode, caller in callers.items():
                run_clients(caller, images, 1, WARMUP)
                for clients in sorted({1, args.clients}):
                    stats = run_clients(caller, images, clients, args.requests)
                    results["runs"].append({"mode": mode, **stats})
        finally:
            server.terminate()
            server.wait(30)
    return results


def print_results(results: dict) -> None:
    print(f"model {results['model']} at {results['image_size']} px, one {results['image_px']} px "
          "grayscale PNG per request")
    print(f"{'mode':<11} {'clients':>7} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    runs = {(r["mode"], r["clients"]): r for r in results["runs"]}
    for r in results["runs"]:
        print(f"{r['mode']:<11} {r['clients']:>7} {r['requests']:>8} {r['p50_ms']:>8.2f} "
              f"{r['p99_ms']:>8.2f} {r['throughput_rps']:>8.1f}")
    for clients in sorted({c for _, c in runs}):
        served, local = runs[("grpc", clients)], runs[("in-process", clients)]
        print(f"{clients} client(s): gRPC / in-process  p50 x{served['p50_ms'] / local['p50_ms']:.2f}, "
              f"p99 x{served['p99_ms'] / local['p99_ms']:.2f}, "
              f"throughput x{served['throughput_rps'] / local['throughput_rps']:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["mobilenetv2", "small"], default="mobilenetv2")
    parser.add_argument("--image-size", type=int, default=96, help="the model's input size")
    parser.add_argument("--image-px", type=int, default=256, help="side of the PNGs sent")
    parser.add_argument("--requests", type=int, default=200, help="requests per run (bounded)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients of the second run")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 5000 or not 1 <= args.clients <= 32:
        parser.error("--requests must be 1-5000 and --clients 1-32")
    results = benchmark(args)
    print_results(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
