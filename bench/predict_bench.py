"""Predict latency and throughput over gRPC against `medkfp serve`, vs in-process, beside their limits.

Exports a model with medkfp's serving signatures, publishes it to a temporary local store and
starts two `medkfp serve --engine builtin` subprocesses on loopback: one plain, one with
`--enable-batching` (TF Serving's batching parameters). Clients send one encoded PNG per
request, from 1 and from 8 concurrent clients (each over its own channel, with the
tensorflow-serving-api stubs). The baseline calls the same SavedModel's serving_default in
this process with the same images. The machine is shared, so the modes are interleaved (one
client: call by call, each mode in turn and in every order; 8 clients: in rounds that run
each mode once) and each ratio compares figures of the same run under the same load.
Request counts and time are bounded; nothing leaves 127.0.0.1.

The model is MobileNetV2 at 96 px (a call takes about 12 ms here), and the limits apply to
it. The same figures at 224 px, the input size the product trains and serves (study 1's
model B), are reported beside them (`served_size`): gRPC's own cost per call (the thread
hand-offs of grpcio's server and client, about 2 ms on a 2-core VM whose idle cores halt at
once) weighs less beside a call of about 30 ms.

A third one-client mode is the floor under any grpcio server: bench/grpc_floor_server.py
runs the same model call behind grpcio's own server with raw bytes in and out (no TF
Serving protos, no model repository, no checks). Its ratio to in-process is what grpcio's
Python server and client cost on this machine; `medkfp serve`'s ratio to it is what the
TF Serving protocol and the server's own work add (`grpc_vs_grpcio_floor`).

Limits (issue 9): gRPC p50 with one client <= 1.15x in-process; batched throughput with 8
clients >= 1.5x the in-process single-caller throughput; batched p99 with 8 clients bounded
by the unbatched server's p99 with 8 clients in the same run (batching must not lengthen
the tail it is there to shorten).

    .venv/bin/python bench/predict_bench.py [--model mobilenetv2|small] [--image-size 96]
                                            [--served-image-size 224] [--requests 240] [--rounds 4]
                                            [--clients 8] [--json bench-out/predict.json]
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from medkfp.cli import native_stderr_silenced  # noqa: E402

# TensorFlow's C++ start-up lines (absl, oneDNN, cuInit) stay out of the figures.
with native_stderr_silenced():
    import tensorflow as tf

    tf.config.list_physical_devices()

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from medkfp import vocab  # noqa: E402
from medkfp.imaging import export_serving_model  # noqa: E402
from medkfp.model_repository import ModelRepository  # noqa: E402
from medkfp.s3server import free_port  # noqa: E402
from medkfp.serving.batching import read_batching_parameters  # noqa: E402
from medkfp.serving.client import ServingError, model_status, set_string_tensor  # noqa: E402
from medkfp.store import LocalStore  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grpc_floor_server import FLOOR_METHOD  # noqa: E402

MODEL = "bench"
CLASSES = ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
WARMUP = 10
MAX_SECONDS_PER_RUN = 60.0
START_TIMEOUT = 120.0
FLOOR = "grpcio-floor"  # the mode of bench/grpc_floor_server.py
P50_LIMIT = 1.15
BATCHED_THROUGHPUT_LIMIT = 1.5
BATCHING_CONFIGMAP = Path(__file__).resolve().parents[1] / "k8s" / "base" / "serving-batching-configmap.yaml"


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
    """`requests` calls (one image each) spread over `clients` threads, bounded in time.

    Returns the raw latencies (s), the wall time and the error count; summarize() turns
    rounds of these into figures.
    """
    per_client = max(1, requests // clients)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + MAX_SECONDS_PER_RUN
    barrier = threading.Barrier(clients)

    def work(index: int) -> None:
        make_call = call()
        mine, failed = [], 0
        barrier.wait()
        for i in range(per_client):
            if time.monotonic() > deadline:
                break
            image = images[(index * per_client + i) % len(images)]
            started = time.perf_counter()
            try:
                make_call(image)
            except grpc.RpcError:
                failed += 1
                continue
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"latencies": latencies, "seconds": time.perf_counter() - started, "errors": errors[0]}


def alternate(callers: dict, images: list[bytes], requests: int) -> dict[str, dict]:
    """One client calling each mode in turn, `requests` calls each, bounded in time.

    The turns go through every order of the modes in a cycle, so each mode runs in every
    position and after each of the others: a call right after an in-process one is slower
    (on 2 cores, +0.05 to +0.07 on the p50 ratio of a gRPC mode that always came second),
    and a fixed order would charge that to one mode only.

    Returns mode -> a run_clients()-shaped result whose wall time is the sum of that mode's
    own call times (a lone sequential caller's throughput is 1 / its mean latency).
    """
    calls = {mode: factory() for mode, factory in callers.items()}
    orders = list(itertools.permutations(calls))
    latencies: dict[str, list[float]] = {mode: [] for mode in calls}
    errors = dict.fromkeys(calls, 0)
    deadline = time.monotonic() + MAX_SECONDS_PER_RUN * len(calls)
    for i in range(requests):
        if time.monotonic() > deadline:
            break
        for mode in orders[i % len(orders)]:
            call = calls[mode]
            started = time.perf_counter()
            try:
                call(images[i % len(images)])
            except grpc.RpcError:
                errors[mode] += 1
                continue
            latencies[mode].append(time.perf_counter() - started)
    return {
        mode: {"latencies": latencies[mode], "seconds": sum(latencies[mode]), "errors": errors[mode]}
        for mode in calls
    }


def summarize(chunks: list[dict], clients: int) -> dict:
    """Rounds of run_clients() results -> requests, errors, p50/p99 ms and requests/s."""
    ms = np.array([t for chunk in chunks for t in chunk["latencies"]]) * 1000
    seconds = sum(chunk["seconds"] for chunk in chunks)
    return {
        "clients": clients,
        "requests": int(ms.size),
        "errors": sum(chunk["errors"] for chunk in chunks),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "throughput_rps": ms.size / seconds,
    }


def grpc_caller(address: str):
    """A factory of per-thread Predict callers, each over its own channel."""

    def factory():
        channel = grpc.insecure_channel(address)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def call(image: bytes):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = MODEL
            # What medkfp's client writes (tf.make_tensor_proto's TensorProto, field by field).
            set_string_tensor(request.inputs[vocab.INPUT_KEY], [image])
            return stub.Predict(request, timeout=30)

        return call

    return factory


def floor_caller(address: str):
    """A factory of per-thread callers of the grpcio floor server, each over its own channel."""

    def factory():
        call = grpc.insecure_channel(address).unary_unary(FLOOR_METHOD)
        return lambda image: call(image, timeout=30)

    return factory


def launch_floor_server(export: Path, port: int, log_path: Path) -> subprocess.Popen:
    """Start bench/grpc_floor_server.py on 127.0.0.1:port (not waiting; see wait_floor)."""
    script = Path(__file__).resolve().parent / "grpc_floor_server.py"
    command = [sys.executable, str(script), str(export), str(port)]
    return subprocess.Popen(command, stdout=log_path.open("w"), stderr=subprocess.STDOUT)


def wait_floor(process: subprocess.Popen, port: int, image: bytes, log_path: Path) -> None:
    """Wait until the floor server answers a call with `image` (see wait_answering)."""
    call = floor_caller(f"127.0.0.1:{port}")()
    wait_answering(
        process, lambda: call(image) is not None, grpc.RpcError, "the grpcio floor server", log_path
    )


def local_caller(signature):
    def factory():
        return lambda image: signature(**{vocab.INPUT_KEY: tf.constant([image])})

    return factory


def batching_file(out: Path) -> Path:
    """The k8s ConfigMap's TF Serving batching parameters, written to `out` for the built-in server."""
    import yaml

    configmap = yaml.safe_load(BATCHING_CONFIGMAP.read_text())
    out.write_text(configmap["data"]["batching.config"])
    return out


def publish_model(tmp: Path, kind: str, image_size: int):
    """Export the bench model into tmp/export, publish it as MODEL in the local store tmp/store.

    Returns (export dir, store dir).
    """
    export = export_serving_model(build_model(kind, image_size), CLASSES, image_size, tmp / "export")
    ModelRepository(LocalStore(tmp / "store")).publish(MODEL, export, {"class_names": CLASSES})
    return export, tmp / "store"


def launch_server(store: Path, port: int, log_path: Path, extra: list[str] = ()) -> subprocess.Popen:
    """Start `medkfp serve --engine builtin` on 127.0.0.1:port (not waiting; see wait_served)."""
    command = [
        sys.executable,
        "-m",
        "medkfp.cli",
        "serve",
        "--engine",
        "builtin",
        "--store",
        str(store),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--poll",
        "60",
        *extra,
    ]
    return subprocess.Popen(command, stdout=log_path.open("w"), stderr=subprocess.STDOUT)


def wait_answering(process: subprocess.Popen, answers, retried: type[Exception], what: str, log_path: Path):
    """Poll `answers()` until it is true, again after 0.5 s when it raises `retried`.

    Raises RuntimeError, naming `what` and its log, when the process exits first, or after
    START_TIMEOUT (the process is then terminated).
    """
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}; see {log_path}")
        try:
            if answers():
                return
        except retried:
            time.sleep(0.5)
    process.terminate()
    raise RuntimeError(f"{what} did not answer within {START_TIMEOUT:.0f} s; see {log_path}")


def wait_served(process: subprocess.Popen, port: int, log_path: Path) -> None:
    """Wait until the server answers GetModelStatus for MODEL (see wait_answering)."""

    def answers() -> bool:
        return bool(model_status(f"127.0.0.1:{port}", MODEL, timeout=2, retries=0))

    wait_answering(process, answers, ServingError, f"medkfp serve of {MODEL}", log_path)


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def benchmark(args) -> dict:
    """Run every mode and client count in interleaved rounds; returns the results dict."""
    with tempfile.TemporaryDirectory(prefix="medkfp-bench-") as tmp:
        tmp = Path(tmp)
        export, store = publish_model(tmp, args.model, args.image_size)
        images = make_images(32, args.image_px)
        signature = tf.saved_model.load(str(export)).signatures[vocab.SIGNATURE]
        parameters = batching_file(tmp / "batching.config")
        batching = ["--enable-batching", "--batching-parameters-file", str(parameters)]
        timeout_us = read_batching_parameters(parameters).batch_timeout_micros
        if args.batch_timeout_micros is not None:
            batching += ["--batch-timeout-micros", str(args.batch_timeout_micros)]
            timeout_us = args.batch_timeout_micros
        ports = {"grpc": free_port(), "grpc-batching": free_port(), FLOOR: free_port()}
        logs = {
            "grpc": tmp / "serve.log",
            "grpc-batching": tmp / "serve-batching.log",
            FLOOR: tmp / "floor.log",
        }
        servers = {
            "grpc": launch_server(store, ports["grpc"], logs["grpc"]),
            "grpc-batching": launch_server(store, ports["grpc-batching"], logs["grpc-batching"], batching),
            FLOOR: launch_floor_server(export, ports[FLOOR], logs[FLOOR]),
        }
        try:
            for mode in ("grpc", "grpc-batching"):
                wait_served(servers[mode], ports[mode], logs[mode])
            wait_floor(servers[FLOOR], ports[FLOOR], images[0], logs[FLOOR])
            callers = {
                "in-process": local_caller(signature),
                **{mode: grpc_caller(f"127.0.0.1:{ports[mode]}") for mode in ("grpc", "grpc-batching")},
                FLOOR: floor_caller(f"127.0.0.1:{ports[FLOOR]}"),
            }
            runs = [(mode, 1) for mode in callers]
            runs += [(mode, args.clients) for mode in callers if mode != FLOOR]
            for caller in callers.values():
                run_clients(caller, images, args.clients, WARMUP * args.clients)
            chunks: dict[tuple[str, int], list[dict]] = {run: [] for run in runs}
            # One client: the modes take turns call by call (in every order), the finest
            # interleaving there is.
            for mode, chunk in alternate(callers, images, args.requests).items():
                chunks[(mode, 1)].append(chunk)
            for _ in range(args.rounds):
                for mode, clients in runs:
                    if clients > 1:
                        chunks[(mode, clients)].append(
                            run_clients(callers[mode], images, clients, args.requests // args.rounds)
                        )
        finally:
            for server in servers.values():
                stop_server(server)
    return {
        "model": args.model,
        "image_size": args.image_size,
        "image_px": args.image_px,
        "rounds": args.rounds,
        "batching_parameters": "k8s/base/serving-batching-configmap.yaml",
        "batch_timeout_micros": timeout_us,
        "runs": [{"mode": mode, **summarize(chunks[(mode, clients)], clients)} for mode, clients in runs],
    }


def figures(results: dict, clients: int) -> dict:
    """The issue-9 figures, their limits and whether each holds, from benchmark() results."""
    runs = {(r["mode"], r["clients"]): r for r in results["runs"]}
    local, served, floor = runs[("in-process", 1)], runs[("grpc", 1)], runs[(FLOOR, 1)]
    batched, unbatched = runs[("grpc-batching", clients)], runs[("grpc", clients)]
    rows = [
        ("grpc_vs_in_process", "p50_1_client", served["p50_ms"] / local["p50_ms"], "<=", P50_LIMIT),
        ("grpc_vs_in_process", "p99_1_client", served["p99_ms"] / local["p99_ms"], "", None),
        ("grpc_vs_in_process", "p50_1_client_grpcio_floor", floor["p50_ms"] / local["p50_ms"], "", None),
        ("grpc_vs_grpcio_floor", "p50_1_client", served["p50_ms"] / floor["p50_ms"], "", None),
        (
            "grpc_vs_in_process",
            "throughput_1_client",
            served["throughput_rps"] / local["throughput_rps"],
            ">=",
            round(1 / P50_LIMIT, 2),
        ),
        (
            "batching",
            f"throughput_{clients}_clients_vs_in_process",
            batched["throughput_rps"] / local["throughput_rps"],
            ">=",
            BATCHED_THROUGHPUT_LIMIT,
        ),
        ("batching", f"p99_ms_{clients}_clients", batched["p99_ms"], "<=", round(unbatched["p99_ms"], 1)),
    ]
    out: dict = {"limits": {}, "pass": {}}
    for group, key, value, op, limit in rows:
        out.setdefault(group, {})[key] = round(value, 3)
        if limit is not None:
            out["limits"][f"{group}.{key}"] = f"{op} {limit}"
            out["pass"][f"{group}.{key}"] = value <= limit if op == "<=" else value >= limit
    out["batching"][f"throughput_{clients}_clients_rps"] = round(batched["throughput_rps"], 1)
    out["batching"][f"unbatched_throughput_{clients}_clients_vs_in_process"] = round(
        unbatched["throughput_rps"] / local["throughput_rps"], 3
    )
    out["batching"]["errors"] = sum(r["errors"] for r in results["runs"])
    return out


def print_results(results: dict) -> None:
    print(
        f"model {results['model']} at {results['image_size']} px, one {results['image_px']} px "
        f"grayscale PNG per request, {results['rounds']} interleaved rounds"
    )
    print(
        f"{'mode':<14} {'clients':>7} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}"
    )
    for r in results["runs"]:
        print(
            f"{r['mode']:<14} {r['clients']:>7} {r['requests']:>8} {r['errors']:>6} {r['p50_ms']:>8.2f} "
            f"{r['p99_ms']:>8.2f} {r['throughput_rps']:>8.1f}"
        )
    print(f"{'figure (ratios: gRPC / in-process, one caller)':<58} {'value':>8}  limit")
    for group in ("grpc_vs_in_process", "grpc_vs_grpcio_floor", "batching"):
        for key, value in results[group].items():
            name = f"{group}.{key}"
            limit = results["limits"].get(name)
            verdict = "" if limit is None else ("  ok" if results["pass"][name] else "  MISSED")
            print(f"{name:<58} {value:>8}  {limit or 'reported'}{verdict}")


def served_size_figures(results: dict, clients: int) -> dict:
    """The figures of a benchmark() run at the served input size, with its p50s in ms."""
    runs = {(r["mode"], r["clients"]): r for r in results["runs"]}
    found = figures(results, clients)
    return {
        "image_size": results["image_size"],
        "in_process_p50_ms": round(runs[("in-process", 1)]["p50_ms"], 3),
        "grpc_p50_ms": round(runs[("grpc", 1)]["p50_ms"], 3),
        "grpc_vs_in_process": found["grpc_vs_in_process"],
        "grpc_vs_grpcio_floor": found["grpc_vs_grpcio_floor"],
        "batching": {k: v for k, v in found["batching"].items() if k != "errors"},
        "errors": found["batching"]["errors"],
    }


def print_served_size(served: dict) -> None:
    print(
        f"the same model at {served['image_size']} px (the served input size), one client: "
        f"in-process p50 {served['in_process_p50_ms']:.2f} ms, gRPC {served['grpc_p50_ms']:.2f} ms"
    )
    for group in ("grpc_vs_in_process", "grpc_vs_grpcio_floor", "batching"):
        for key, value in served[group].items():
            print(f"{'served_size.' + group + '.' + key:<58} {value:>8}  reported")
    print(f"{'served_size.errors':<58} {served['errors']:>8}  reported")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["mobilenetv2", "small"], default="mobilenetv2")
    parser.add_argument("--image-size", type=int, default=96, help="the model's input size")
    parser.add_argument(
        "--served-image-size",
        type=int,
        default=224,
        help="also report the figures of the model at this input size (0: do not)",
    )
    parser.add_argument("--image-px", type=int, default=256, help="side of the PNGs sent")
    parser.add_argument("--requests", type=int, default=240, help="requests per mode and client count")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds to split the requests in")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients of the second run")
    parser.add_argument(
        "--batch-timeout-micros",
        type=int,
        help="override the ConfigMap's batch_timeout_micros for the batching server",
    )
    parser.add_argument("--json", default="bench-out/predict.json", help="write the figures to this file")
    args = parser.parse_args(argv)
    if not 1 <= args.requests <= 5000 or not 2 <= args.clients <= 32 or not 1 <= args.rounds <= args.requests:
        parser.error("--requests must be 1-5000, --clients 2-32 and --rounds 1-requests")
    results = benchmark(args)
    results.update(figures(results, args.clients))
    print_results(results)
    if args.served_image_size:
        served = benchmark(argparse.Namespace(**{**vars(args), "image_size": args.served_image_size}))
        results["served_size"] = served_size_figures(served, args.clients)
        print_served_size(results["served_size"])
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
