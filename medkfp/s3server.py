"""A loopback S3 server (moto's) for the demo and the tests, and the variables pointing at it.

MinIO's server binary is not installable from the package registries; moto's server speaks
the S3 protocol over HTTP to the minio client, so the S3 code path is what gets exercised.
It runs moto's S3 application alone (`python -m medkfp.s3server PORT`) rather than `moto.server`,
whose dispatcher lists moto's package folder on every request to find the service: the same
S3 answers for about a quarter less of the CPU it shares with the steps.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

from medkfp import vocab

ACCESS_KEY = "medkfp-demo"
SECRET_KEY = "medkfp-demo-secret"
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_env(endpoint: str) -> dict[str, str]:
    return {
        vocab.S3_ENDPOINT_ENV: endpoint,
        vocab.ACCESS_KEY_ENV: ACCESS_KEY,
        vocab.SECRET_KEY_ENV: SECRET_KEY,
        vocab.REGION_ENVS[0]: "us-east-1",
    }


def wait_until_up(endpoint: str, process: subprocess.Popen, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the S3 server exited with status {process.returncode}")
        try:
            urllib.request.urlopen(endpoint, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answers, even if with an error status
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the S3 server at {endpoint} did not start within {timeout:.0f} s")


@contextmanager
def loopback_s3(port: int | None = None, set_environ: bool = True):
    """Start moto's S3 server on 127.0.0.1; yields its variables (set in os.environ too).

    Everything it started is stopped on exit, and os.environ is restored.
    """
    port = port or free_port()
    endpoint = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "medkfp.s3server", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    saved = dict(os.environ)
    try:
        wait_until_up(endpoint, process)
        env = s3_env(endpoint)
        if set_environ:
            os.environ.update(env)
        yield env
    finally:
        if set_environ:
            os.environ.clear()
            os.environ.update(saved)
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def serve_s3(port: int) -> None:
    """Serve moto's S3 application on 127.0.0.1:`port` until terminated."""
    from moto.server import MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    run_simple("127.0.0.1", port, create_backend_app("s3"), threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    serve_s3(int(sys.argv[1]))
