"""Bounded parallel map, parallel uploads and a terminal progress bar for ingest, plan and preprocess."""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from medkfp.store import StoreError

T = TypeVar("T")
R = TypeVar("R")

# Threads, not processes: file and object-store reads wait on I/O, and Pillow's and
# TensorFlow's decoders release the GIL while they work.
DEFAULT_WORKERS = min(8, (os.cpu_count() or 2) * 2)
# Uploads of small objects wait on the network round trip, not the CPU: more threads than
# cores keep the connection pool (16 connections in medkfp.store) busy.
UPLOAD_WORKERS = 16


def bounded_map(
    fn: Callable[[T], R], items: Iterable[T], workers: int = DEFAULT_WORKERS, window: int | None = None
) -> Iterator[R]:
    """fn over items in threads, results in input order, at most `window` items in flight.

    The window bounds memory: an item's data is read inside `fn` and dropped once its
    result is taken, so peak memory does not grow with the number of items.
    """
    window = window or workers * 4
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class UploadError(StoreError):
    """Some uploads of a batch failed; `failed` lists their keys, the message the first one."""

    def __init__(self, failed: list[str], total: int, first: BaseException):
        self.failed = failed
        super().__init__(
            f"{len(failed)} of {total} uploads failed (first: {failed[0]}: {first}); "
            "check the store and run again"
        )


class Uploader:
    """Uploads in a bounded thread pool: submit(key, data) returns at once unless `window`
    uploads are already in flight (so memory stays bounded), and close() waits for all.

    `put(key, data)` is called once per submitted item, from a pool thread (the minio
    client and the local store are thread-safe). close() raises UploadError naming every
    key whose put raised, so a failure is never lost in a worker thread. Use as a context
    manager; submit may be called from several threads.
    """

    def __init__(
        self, put: Callable[[str, bytes], None], workers: int = UPLOAD_WORKERS, window: int | None = None
    ):
        self._put = put
        self._pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="upload")
        self._slots = threading.BoundedSemaphore(window or max(1, workers) * 4)
        self._lock = threading.Lock()
        self._failures: list[tuple[int, str, BaseException]] = []
        self.submitted = 0

    def submit(self, key: str, data: bytes) -> None:
        self._slots.acquire()
        with self._lock:
            index = self.submitted
            self.submitted += 1
        try:
            self._pool.submit(self._run, index, key, data)
        except BaseException:
            self._slots.release()
            raise

    def _run(self, index: int, key: str, data: bytes) -> None:
        try:
            self._put(key, data)
        except Exception as e:  # reported by close(), with every other failure
            with self._lock:
                self._failures.append((index, key, e))
        finally:
            self._slots.release()

    def close(self) -> int:
        """Wait for every upload; returns how many were submitted. Raises UploadError."""
        self._pool.shutdown(wait=True)
        if self._failures:
            failures = sorted(self._failures, key=lambda f: f[0])
            raise UploadError([key for _, key, _ in failures], self.submitted, failures[0][2])
        return self.submitted

    def __enter__(self) -> Uploader:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # the caller's error wins; still wait, so no upload outlives the call
            self._pool.shutdown(wait=True)


def upload_all(
    put: Callable[[str, bytes], None], items: Iterable[tuple[str, bytes]], workers: int = UPLOAD_WORKERS
) -> int:
    """put(key, data) for every (key, data) in items, in parallel; returns the count.
    Raises UploadError naming the keys that failed."""
    with Uploader(put, workers) as uploads:
        for key, data in items:
            uploads.submit(key, data)
    return uploads.submitted


@contextlib.contextmanager
def progress_bar(enabled: bool, description: str, total: int):
    """Yields advance(n=1); draws a rich progress bar on stderr when enabled."""
    if not enabled:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
