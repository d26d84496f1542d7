"""Server-side batching for the built-in model server: concurrent requests run as one batch.

Requests for the same model version and signature are queued; a batch closes when it holds
`max_batch_size` items or `batch_timeout_micros` after its first request arrived, whichever
comes first, and one of `num_batch_threads` workers runs it once: the inputs concatenated
along the batch dimension, the outputs split back per request. The names and meaning of the
parameters are TF Serving's (`--enable_batching`, `--batching_parameters_file`), so the
BatchingParameters file written for TF Serving configures this server too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from medkfp.errors import UserError

log = logging.getLogger(__name__)

# An array dict in, an array dict out: one call of a signature on a (batched) input.
Runner = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class BatchingConfigError(UserError, ValueError):
    """Batching parameters that cannot work (a bad value or an unreadable file)."""


class QueueFull(RuntimeError):
    """More than max_enqueued_batches batches are waiting: the request is refused at once."""


class BatcherClosed(RuntimeError):
    """The batcher was closed (the server is stopping) before the request ran."""


@dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's BatchingParameters that this server honours (defaults: k8s ConfigMap's)."""

    max_batch_size: int = 32
    batch_timeout_micros: int = 5000
    max_enqueued_batches: int = 100
    num_batch_threads: int = 2

    def __post_init__(self):
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise BatchingConfigError(
                    f"batching parameter {name} must be at least 1, got {getattr(self, name)}"
                )
        if not 0 <= self.batch_timeout_micros <= 10_000_000:
            raise BatchingConfigError(
                f"batching parameter batch_timeout_micros must be 0-10000000 (10 s), "
                f"got {self.batch_timeout_micros}"
            )


# TF Serving's BatchingParameters message (tensorflow_serving/servables/tensorflow/
# session_bundle_config.proto). The pip package does not ship it, so the same fields are
# declared here; protobuf's own text-format parser then reads the file exactly as TF
# Serving does, comments and all.
_SUPPORTED = ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads")
_PROTO_FIELDS = (
    ("max_batch_size", 1, "Int64Value"),
    ("batch_timeout_micros", 2, "Int64Value"),
    ("max_enqueued_batches", 3, "Int64Value"),
    ("num_batch_threads", 4, "Int64Value"),
    ("thread_pool_name", 5, "StringValue"),
    ("allowed_batch_sizes", 6, None),
    ("pad_variable_length_inputs", 7, "bool"),
    ("max_execution_batch_size", 8, "Int64Value"),
    ("enable_large_batch_splitting", 9, "BoolValue"),
)


def _batching_parameters_class():
    from google.protobuf import wrappers_pb2

    proto = descriptor_pb2.FileDescriptorProto(
        name="medkfp/batching_parameters.proto",
        package="medkfp.tfserving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = proto.message_type.add(name="BatchingParameters")
    kinds = descriptor_pb2.FieldDescriptorProto
    for name, number, kind in _PROTO_FIELDS:
        entry = message.field.add(name=name, number=number)
        if kind is None:
            entry.type, entry.label = kinds.TYPE_INT64, kinds.LABEL_REPEATED
        elif kind == "bool":
            entry.type, entry.label = kinds.TYPE_BOOL, kinds.LABEL_OPTIONAL
        else:
            entry.type, entry.label = kinds.TYPE_MESSAGE, kinds.LABEL_OPTIONAL
            entry.type_name = f".google.protobuf.{kind}"
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("medkfp.tfserving.BatchingParameters"))


def read_batching_parameters(
    path: str | Path, defaults: BatchingParameters | None = None
) -> BatchingParameters:
    """Read a TF Serving batching parameters file (BatchingParameters text proto).

    Fields absent from the file keep `defaults`; TF Serving fields this server does not
    implement (allowed_batch_sizes, ...) are logged and ignored. Returns the parameters.
    Raises BatchingConfigError for an unreadable file, a syntax error or a bad value.
    """
    defaults = defaults or BatchingParameters()
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise BatchingConfigError(f"cannot read batching parameters file {path}: {e.strerror}") from None
    message = _batching_parameters_class()()
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as e:
        raise BatchingConfigError(
            f"batching parameters file {path}: {e}; write TF Serving's format, "
            "e.g. 'max_batch_size { value: 32 }'"
        ) from None
    ignored = [f.name for f, _ in message.ListFields() if f.name not in _SUPPORTED]
    if ignored:
        log.warning(
            "batching parameters file %s: %s not supported by the built-in server, ignored",
            path,
            ", ".join(ignored),
        )
    values = {name: getattr(message, name).value for name in _SUPPORTED if message.HasField(name)}
    return BatchingParameters(**{**defaults.__dict__, **values})


# --- the queue --------------------------------------------------------------------------------


@dataclass
class _Task:
    inputs: dict[str, np.ndarray]
    size: int
    future: Future = field(default_factory=Future)


@dataclass
class _Batch:
    key: Hashable
    runner: Runner
    deadline: float
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0


def batch_size_of(inputs: dict[str, np.ndarray]) -> int | None:
    """The common leading dimension of every input, or None when they cannot be batched."""
    sizes = {array.shape[0] if array.ndim else None for array in inputs.values()}
    if len(sizes) != 1 or None in sizes:
        return None
    return sizes.pop()


class Batcher:
    """Queues requests per key (model, version, signature) and runs them in batches.

    submit() returns a Future of the request's own outputs. A request larger than
    max_batch_size, or whose inputs have no common batch dimension, runs alone. When a
    batch of several requests fails, each request is run again alone, so one request's bad
    input fails only that request. `batch_sizes` counts batches by how many requests they
    held (bounded: one entry per size).
    """

    def __init__(self, parameters: BatchingParameters | None = None, name: str = "medkfp-batch"):
        self.parameters = parameters or BatchingParameters()
        self._timeout = self.parameters.batch_timeout_micros / 1e6
        self._cond = threading.Condition()
        self._open: dict[Hashable, _Batch] = {}
        self._ready: deque[_Batch] = deque()
        self._closed = False
        self.batch_sizes: Counter[int] = Counter()
        self._workers = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(self.parameters.num_batch_threads)
        ]
        for worker in self._workers:
            worker.start()

    def submit(self, key: Hashable, runner: Runner, inputs: dict[str, np.ndarray]) -> Future:
        """Queue one request's inputs for `runner` under `key`; returns a Future of its outputs.

        Requests only share a batch when their keys are equal, and `runner` must be the same
        for equal keys. Raises QueueFull when max_enqueued_batches batches wait already, and
        BatcherClosed after close().
        """
        size = batch_size_of(inputs)
        task = _Task(inputs, size or 0)
        with self._cond:
            if self._closed:
                raise BatcherClosed("the server is stopping")
            batch = self._open.get(key)
            if size is None or size > self.parameters.max_batch_size:
                self._check_room()
                alone = _Batch(key, runner, 0.0, [task], task.size)
                self._ready.append(alone)
            else:
                if batch is not None and batch.size + size > self.parameters.max_batch_size:
                    self._close_open(key)
                    batch = None
                if batch is None:
                    self._check_room()
                    batch = _Batch(key, runner, time.monotonic() + self._timeout)
                    self._open[key] = batch
                batch.tasks.append(task)
                batch.size += size
                if batch.size >= self.parameters.max_batch_size or self._timeout == 0:
                    self._close_open(key)
            self._cond.notify_all()
        return task.future

    def run(self, key: Hashable, runner: Runner, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """submit() and wait: the request's outputs, or the exception its run raised."""
        return self.submit(key, runner, inputs).result()

    def close(self) -> None:
        """Stop the workers; requests still queued fail with BatcherClosed."""
        with self._cond:
            self._closed = True
            pending = list(self._ready) + list(self._open.values())
            self._ready.clear()
            self._open.clear()
            self._cond.notify_all()
        for batch in pending:
            for task in batch.tasks:
                task.future.set_exception(BatcherClosed("the server stopped before the request ran"))
        for worker in self._workers:
            worker.join(timeout=30)

    # --- inside the lock ------------------------------------------------------------------
    def _check_room(self) -> None:
        # The open batches count: each is one batch waiting to run, as in TF Serving.
        if len(self._ready) + len(self._open) >= self.parameters.max_enqueued_batches:
            raise QueueFull(
                f"the batching queue is full ({self.parameters.max_enqueued_batches} batches "
                "waiting): retry later, or raise max_enqueued_batches"
            )

    def _close_open(self, key: Hashable) -> None:
        self._ready.append(self._open.pop(key))

    def _next_batch(self) -> _Batch | None:
        """The next batch to run, waiting for one to be full or due; None once closed."""
        while not self._closed:
            if self._ready:
                return self._ready.popleft()
            now = time.monotonic()
            due = min(self._open.values(), key=lambda b: b.deadline, default=None)
            if due is not None and due.deadline <= now:
                self._close_open(due.key)
                continue
            self._cond.wait(None if due is None else due.deadline - now)
        return None

    # --- the workers ----------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                batch = self._next_batch()
                if batch is None:
                    return
                self.batch_sizes[len(batch.tasks)] += 1
            self._run_batch(batch)

    def _run_batch(self, batch: _Batch) -> None:
        if len(batch.tasks) == 1:
            self._run_alone(batch.runner, batch.tasks[0])
            return
        try:
            inputs = {
                name: np.concatenate([task.inputs[name] for task in batch.tasks])
                for name in batch.tasks[0].inputs
            }
            outputs = batch.runner(inputs)
            parts = _split(outputs, [task.size for task in batch.tasks])
        except Exception as e:
            # Which request caused it is unknown: run each alone so only its own fails.
            log.debug("batch of %d requests failed (%s); running them one by one", len(batch.tasks), e)
            for task in batch.tasks:
                self._run_alone(batch.runner, task)
            return
        for task, part in zip(batch.tasks, parts):
            task.future.set_result(part)

    @staticmethod
    def _run_alone(runner: Runner, task: _Task) -> None:
        try:
            task.future.set_result(runner(task.inputs))
        except BaseException as e:  # the request's own failure goes back to its caller
            task.future.set_exception(e)


def _split(outputs: dict[str, np.ndarray], sizes: list[int]) -> list[dict[str, np.ndarray]]:
    """Split batched outputs back per request; raises ValueError if an output is not batched."""
    total = sum(sizes)
    for name, array in outputs.items():
        if np.ndim(array) == 0 or array.shape[0] != total:
            raise ValueError(f"output {name!r} has shape {np.shape(array)}, not a batch of {total}")
    bounds = np.cumsum(sizes)[:-1]
    pieces = {name: np.split(array, bounds) for name, array in outputs.items()}
    return [{name: pieces[name][i] for name in outputs} for i in range(len(sizes))]
