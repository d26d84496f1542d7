"""Soak: 8 clients against `medkfp serve` for 5 minutes; zero errors and flat resident memory.

Publishes the predict bench's model to a temporary local store, starts `medkfp serve
--engine builtin` (with the k8s ConfigMap's batching parameters unless --no-batching) as a
subprocess on 127.0.0.1 and keeps N clients sending one PNG per request until the time is
up. The server's resident memory is read from /proc/<pid>/status every few seconds; after
the warm-up it must stay flat (growth under 10% from the first samples after warm-up to the
last ones). Every request loop is bounded in count and time; nothing leaves 127.0.0.1.

    .venv/bin/python bench/soak_bench.py [--seconds 300] [--clients 8] [--no-batching]
                                         [--json bench-out/soak.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from predict_bench import (  # noqa: E402
    batching_file,
    grpc_caller,
    launch_server,
    make_images,
    publish_model,
    stop_server,
    wait_served,
)

from medkfp.s3server import free_port  # noqa: E402

GROWTH_LIMIT = 0.10
SAMPLE_EVERY = 3.0
# Each client stops after this many requests even if time is left: a bound, not a target.
MAX_REQUESTS_PER_CLIENT_PER_S = 500
EDGE_SAMPLES = 5  # RSS at a point = the median of this many samples around it


def rss_bytes(pid: int) -> int:
    """Resident memory of process `pid` (VmRSS in /proc/<pid>/status), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def soak(address: str, pid: int, images: list[bytes], clients: int, seconds: float, warmup: float) -> dict:
    """Run `clients` request loops for `seconds` while sampling the server's RSS.

    Returns counts, latency figures, error codes and the RSS samples [(s since start, bytes)].
    """
    stop_at = time.monotonic() + seconds
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    factory = grpc_caller(address)
    limit = int(seconds * MAX_REQUESTS_PER_CLIENT_PER_S)

    def work(index: int) -> None:
        call, mine, failed = factory(), [], Counter()
        for i in range(limit):
            if time.monotonic() >= stop_at:
                break
            started = time.perf_counter()
            try:
                call(images[(index + i) % len(images)])
            except grpc.RpcError as e:
                failed[e.code().name] += 1
                continue
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)
            errors.update(failed)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    samples = []
    while any(thread.is_alive() for thread in threads):
        samples.append((round(time.monotonic() - started, 1), rss_bytes(pid)))
        for thread in threads:
            thread.join(timeout=SAMPLE_EVERY / clients)
    elapsed = time.monotonic() - started
    samples.append((round(elapsed, 1), rss_bytes(pid)))
    ms = np.array(latencies) * 1000
    return {
        "requests": int(ms.size),
        "errors": sum(errors.values()),
        "error_codes": dict(errors),
        "throughput_rps": ms.size / elapsed,
        "p50_ms": float(np.percentile(ms, 50)) if ms.size else None,
        "p99_ms": float(np.percentile(ms, 99)) if ms.size else None,
        "seconds_run": elapsed,
        "rss_samples": samples,
        "warmup_seconds": warmup,
    }


def memory_figures(samples: list[tuple[float, int]], warmup: float) -> dict:
    """RSS right after warm-up and at the end (medians of a few samples), and the growth."""
    after = [rss for t, rss in samples if t >= warmup]
    if len(after) < 2 * EDGE_SAMPLES:
        raise RuntimeError(f"only {len(after)} RSS samples after warm-up: run the soak longer")
    first = float(np.median(after[:EDGE_SAMPLES]))
    last = float(np.median(after[-EDGE_SAMPLES:]))
    return {
        "rss_mb_after_warmup": round(first / 2**20, 1),
        "rss_mb_end": round(last / 2**20, 1),
        "rss_mb_peak_after_warmup": round(max(after) / 2**20, 1),
        "rss_growth": round(last / first - 1, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="how long the clients send")
    parser.add_argument(
        "--warmup",
        type=float,
        help="seconds before memory must be flat (default: a fifth of --seconds, at most 60)",
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--model", choices=["mobilenetv2", "small"], default="mobilenetv2")
    parser.add_argument("--image-size", type=int, default=96, help="the model's input size")
    parser.add_argument("--image-px", type=int, default=256, help="side of the PNGs sent")
    parser.add_argument("--no-batching", action="store_true", help="serve without --enable-batching")
    parser.add_argument("--json", default="bench-out/soak.json", help="write the figures to this file")
    args = parser.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else min(60.0, args.seconds / 5)
    if not 10 <= args.seconds <= 3600 or not 1 <= args.clients <= 32 or not 0 <= warmup < args.seconds:
        parser.error("--seconds must be 10-3600, --clients 1-32 and --warmup below --seconds")

    with tempfile.TemporaryDirectory(prefix="medkfp-soak-") as tmp:
        tmp = Path(tmp)
        _, store = publish_model(tmp, args.model, args.image_size)
        extra = (
            []
            if args.no_batching
            else [
                "--enable-batching",
                "--batching-parameters-file",
                str(batching_file(tmp / "batching.config")),
            ]
        )
        port, log_path = free_port(), tmp / "serve.log"
        server = launch_server(store, port, log_path, extra)
        try:
            wait_served(server, port, log_path)
            images = make_images(32, args.image_px)
            mode = "no batching" if args.no_batching else "batching"
            print(
                f"soak: {args.clients} clients for {args.seconds:.0f} s against medkfp serve ({mode}), "
                f"warm-up {warmup:.0f} s",
                flush=True,
            )
            result = soak(f"127.0.0.1:{port}", server.pid, images, args.clients, args.seconds, warmup)
        finally:
            stop_server(server)
    result.update(memory_figures(result["rss_samples"], warmup))
    result.update(
        {
            "seconds": args.seconds,
            "clients": args.clients,
            "batching": not args.no_batching,
            "model": args.model,
            "limits": {"errors": "== 0", "rss_growth": f"< {GROWTH_LIMIT}"},
        }
    )
    result["pass"] = result["errors"] == 0 and result["rss_growth"] < GROWTH_LIMIT

    print(f"{'figure':<28} {'value':>10}  limit")
    print(f"{'requests':<28} {result['requests']:>10}  reported")
    print(f"{'errors':<28} {result['errors']:>10}  == 0 {result['error_codes'] or ''}")
    print(f"{'throughput req/s':<28} {result['throughput_rps']:>10.1f}  reported")
    print(f"{'p50 ms':<28} {result['p50_ms']:>10.1f}  reported")
    print(f"{'p99 ms':<28} {result['p99_ms']:>10.1f}  reported")
    print(f"{'RSS MB after warm-up':<28} {result['rss_mb_after_warmup']:>10}  reported")
    print(
        f"{'RSS MB at the end':<28} {result['rss_mb_end']:>10}  reported "
        f"(peak {result['rss_mb_peak_after_warmup']})"
    )
    print(f"{'RSS growth after warm-up':<28} {result['rss_growth']:>10.2%}  < {GROWTH_LIMIT:.0%}")
    print("soak:", "ok" if result["pass"] else "MISSED")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
