"""Bounded parallel map and a terminal progress bar, shared by ingest, plan and preprocess."""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Threads, not processes: file and object-store reads wait on I/O, and Pillow's and
# TensorFlow's decoders release the GIL while they work.
DEFAULT_WORKERS = min(8, (os.cpu_count() or 2) * 2)


def bounded_map(fn: Callable[[T], R], items: Iterable[T], workers: int = DEFAULT_WORKERS,
                window: int | None = None) -> Iterator[R]:
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
