"""Run a real `tensorflow_model_server` over a serving-sync mirror of the store, as the cluster does.

TF Serving cannot read s3:// (tensorflow/serving#1963), so `medkfp serve` with TF Serving
mirrors the repository into a local folder (medkfp.serving.sync), starts the binary on the
mirror's models.config and keeps syncing beside it, asking it (GetModelStatus) before moving
a label. The flags are the ones the cluster's pod uses; see tfserving_command().
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import threading
from pathlib import Path

from medkfp import vocab
from medkfp.errors import InvalidInputError
from medkfp.serving.process import ServeError, configure_logging, stop_on_signals
from medkfp.serving.sync import PENDING_RECHECK_SECONDS, ServingSync, SyncReport
from medkfp.store import StoreError, open_store

log = logging.getLogger(__name__)

ENGINES = vocab.SERVING_ENGINES
BUILTIN, TF_SERVING = "builtin", "tensorflow-serving"
STOP_GRACE_SECONDS = 10.0


def find_binary() -> str | None:
    """The path of tensorflow_model_server on PATH, or None."""
    return shutil.which(vocab.TF_SERVING_BINARY)


def choose_engine(engine: str) -> str:
    """ "builtin" or "tensorflow-serving" for --engine auto|builtin|tensorflow-serving.

    auto picks TF Serving when its binary is on PATH. Raises ServeError when TF Serving is
    asked for and not installed.
    """
    if engine not in ENGINES:
        raise InvalidInputError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    if engine == BUILTIN:
        return BUILTIN
    if find_binary():
        return TF_SERVING
    if engine == TF_SERVING:
        raise ServeError(
            f"{vocab.TF_SERVING_BINARY} is not on PATH: install TensorFlow Serving or use --engine builtin"
        )
    return BUILTIN


def tfserving_command(binary: str, config_file: str | Path, port: int, poll_seconds: float) -> list[str]:
    """The tensorflow_model_server command line for a serving-sync mirror.

    --model_config_file_poll_wait_seconds re-reads the config the sync rewrites;
    --allow_version_labels_for_unavailable_models lets TF Serving start from (or add a
    model with) a config whose labels name versions still loading. It never lets an
    existing label move to an unloaded version: serving-sync moves labels only after
    GetModelStatus reports the new version AVAILABLE.
    """
    return [
        binary,
        f"--port={port}",
        f"--model_config_file={config_file}",
        f"--model_config_file_poll_wait_seconds={max(1, round(poll_seconds))}",
        "--file_system_poll_wait_seconds=1",
        "--allow_version_labels_for_unavailable_models=true",
    ]


def serve_with_tfserving(
    store_uri: str | None,
    model_dir: str | Path = vocab.DEFAULT_SERVING_DIR,
    port: int = vocab.DEFAULT_GRPC_PORT,
    poll_interval: float = vocab.DEFAULT_POLL_SECONDS,
    binary: str | None = None,
    ready_event: threading.Event | None = None,
    stop_event: threading.Event | None = None,
) -> None:
    """Sync the store into `model_dir`, run tensorflow_model_server on it, keep syncing.

    Blocks until SIGINT/SIGTERM (main thread) or `stop_event`, then stops TF Serving
    (SIGTERM, then SIGKILL after STOP_GRACE_SECONDS). Raises StoreError when the store
    cannot be read at start, ServeError when the binary is missing or exits by itself.
    """
    configure_logging()
    binary = binary or find_binary()
    if not binary:
        choose_engine(TF_SERVING)  # raises the one-line "not on PATH" error
    sync = ServingSync(open_store(store_uri), model_dir, server=f"127.0.0.1:{port}")
    _log_pass(sync.sync_once())
    command = tfserving_command(binary, sync.config_path, port, poll_interval)
    log.info("starting %s", shlex.join(command))
    try:
        process = subprocess.Popen(command)
    except OSError as e:
        raise ServeError(f"cannot run {binary}: {e.strerror}") from None
    stop = stop_event or threading.Event()
    try:
        with stop_on_signals(stop):
            if ready_event is not None:
                ready_event.set()
            _supervise(process, sync, poll_interval, stop)
    finally:
        _terminate(process)


def _supervise(process: subprocess.Popen, sync: ServingSync, interval: float, stop: threading.Event) -> None:
    """Sync every `interval` s (sooner while a label waits) until stop; raise if TF Serving dies."""
    wait = interval
    while not stop.wait(wait):
        if process.poll() is not None:
            raise ServeError(
                f"{vocab.TF_SERVING_BINARY} exited with status {process.returncode}: see its log above"
            )
        try:
            report = sync.sync_once()
        except StoreError as e:
            log.error("serving-sync pass failed, TF Serving keeps its models: %s", e)
            continue
        _log_pass(report)
        wait = min(interval, PENDING_RECHECK_SECONDS) if report.pending else interval


def _log_pass(report: SyncReport) -> None:
    if report.changed:
        log.info("serving-sync: %s", report.to_dict())


def _terminate(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
