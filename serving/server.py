"""The built-in model server process: a TF Serving-compatible gRPC server over a store's model repository.

It answers TF Serving's `PredictionService` and `ModelService` (medkfp.serving.handlers)
for the models of `models/models.config` in the store or a serving-sync mirror
(medkfp.serving.models). This module builds and binds the gRPC server, starts it, and stops
it gracefully on SIGINT/SIGTERM; `serve()` is what `medkfp serve --engine builtin` runs.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from medkfp import vocab
from medkfp.serving.batching import Batcher, BatchingParameters
from medkfp.serving.handlers import ModelStatusServicer, PredictionServicer, RequestLimits
from medkfp.serving.models import ModelManager
from medkfp.serving.process import ServeError, address, configure_logging, stop_on_signals
from medkfp.store import Store, open_store

__all__ = ["ModelServer", "RequestLimits", "ServeError", "ServerOptions", "serve", "start_server"]

log = logging.getLogger(__name__)

DEFAULT_MAX_WORKERS = 8
MAX_BATCHING_WORKERS = 64
STOP_GRACE_SECONDS = 5.0


@dataclass(frozen=True)
class ServerOptions:
    """How the built-in server listens, polls and limits requests (`medkfp serve`'s flags).

    port 0 picks a free port; `cache_dir` None caches versions in a temporary folder that
    is deleted on stop; `batching` None serves every request on its own.
    """

    port: int = vocab.DEFAULT_GRPC_PORT
    host: str = vocab.DEFAULT_SERVE_HOST
    cache_dir: str | Path | None = None
    poll_interval: float = vocab.DEFAULT_POLL_SECONDS
    max_workers: int = DEFAULT_MAX_WORKERS
    max_message_bytes: int = vocab.MAX_MESSAGE_BYTES
    limits: RequestLimits = field(default_factory=RequestLimits)
    batching: BatchingParameters | None = None


# start_server()'s default: a server on loopback only, on a port the system picks.
LOCAL = ServerOptions(port=0, host="127.0.0.1")


class ModelServer:
    """The gRPC server plus the ModelManager that feeds it; start() it, then stop() it."""

    def __init__(self, store_uri: str | Store | None, options: ServerOptions | None = None):
        self.store_uri = store_uri
        self.options = options or ServerOptions()
        self.batcher: Batcher | None = None
        self.port: int | None = None
        self.manager: ModelManager | None = None
        self._grpc: grpc.Server | None = None

    def start(self) -> ModelServer:
        """Load the models named in models.config, then listen; returns self.

        Raises StoreError if the store or its models.config cannot be read, ServeError if
        the address cannot be bound. Versions that fail to load are logged, not raised.
        """
        store = self.store_uri if isinstance(self.store_uri, Store) else open_store(self.store_uri)
        self.manager = ModelManager(store, self.options.cache_dir)
        try:
            # Bind before loading so a taken port fails at once, not after every download;
            # requests are only accepted after start(), when the models are loaded.
            server = self._build_grpc_server()
            self.manager.reload()
            if not self.manager.snapshot():
                log.warning(
                    "no model to serve yet in %s: waiting for a version to be published",
                    self.manager.store.uri,
                )
            server.start()
            self._grpc = server
        except BaseException:
            self.manager.close()
            if self.batcher is not None:
                self.batcher.close()
            raise
        self.manager.start_polling(self.options.poll_interval)
        log.info("model server listening on %s", address(self.options.host, self.port))
        return self

    def _build_grpc_server(self) -> grpc.Server:
        options = self.options
        channel_options = [
            ("grpc.max_receive_message_length", options.max_message_bytes),
            ("grpc.max_send_message_length", options.max_message_bytes),
            # Without this a second server could silently share the port with a first one.
            ("grpc.so_reuseport", 0),
        ]
        workers = options.max_workers
        if options.batching is not None:
            self.batcher = Batcher(options.batching)
            # A request thread waits while its batch forms: enough of them to fill a batch,
            # or batches could never grow past the thread count.
            workers = max(workers, min(options.batching.max_batch_size, MAX_BATCHING_WORKERS))
            log.info("batching: %s", options.batching)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medkfp-grpc"),
            options=channel_options,
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.manager, options.limits, self.batcher), server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelStatusServicer(self.manager), server)
        where = address(options.host, options.port)
        try:
            port = server.add_insecure_port(where)
        except RuntimeError:
            port = 0
        if not port:
            raise ServeError(f"cannot listen on {where}: is the port in use? pick another with --port")
        self.port = port
        return server

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop accepting requests, let running ones finish for up to `grace` s, unload."""
        if self._grpc is not None:
            self._grpc.stop(grace).wait()
            self._grpc = None
            log.info("model server on %s stopped", address(self.options.host, self.port))
        if self.batcher is not None:
            self.batcher.close()
            self.batcher = None
        if self.manager is not None:
            self.manager.close()

    def __enter__(self) -> ModelServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(
    store_uri: str | Store | None, options: ServerOptions | None = None, **overrides
) -> ModelServer:
    """Start a server in this process without blocking.

    `store_uri` is a store URI or a Store (e.g. a serving-sync MirrorStore); `options`
    defaults to LOCAL (127.0.0.1, a free port), and keyword `overrides` replace single
    ServerOptions fields (`start_server(uri, port=0, poll_interval=60)`). Returns the
    started ModelServer (`.port` is the bound port; call `.stop()` or use it as a context
    manager). Raises StoreError or ServeError like ModelServer.start(), TypeError for an
    override that is no ServerOptions field.
    """
    return ModelServer(store_uri, dataclasses.replace(options or LOCAL, **overrides)).start()


def serve(
    store_uri: str | Store | None,
    options: ServerOptions | None = None,
    *,
    ready_event: threading.Event | None = None,
    stop_event: threading.Event | None = None,
    **overrides,
) -> None:
    """Serve the store's models until SIGINT/SIGTERM (or `stop_event`), then stop gracefully.

    `options` defaults to ServerOptions() (every interface, port 8500); keyword `overrides`
    replace single fields. `ready_event` is set once the models are loaded and the port is
    bound. Signals are only caught when called from the main thread; elsewhere, pass
    `stop_event`. On stop the server refuses new requests and lets running ones finish
    (STOP_GRACE_SECONDS). Raises StoreError or ServeError when the server cannot start.
    """
    configure_logging()
    stop = stop_event or threading.Event()
    server = start_server(store_uri, options or ServerOptions(), **overrides)
    try:
        with stop_on_signals(stop):
            if ready_event is not None:
                ready_event.set()
            # A timed wait keeps the main thread responsive to signals on every platform.
            while not stop.wait(1.0):
                pass
            log.info("shutting down the model server")
    finally:
        server.stop()
