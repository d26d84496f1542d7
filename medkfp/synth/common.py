"""What every synthetic set shares: seed tags, argument checks, the output folder, file writers."""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

MIN_SIZE = 16

# Every image is drawn from its own generator seeded from (seed, tag, class or film number), so
# the same seed gives byte-identical files (with the same numpy and Pillow) and one set's count
# never shifts another's images. One tag per stream, all here so that no two streams share one.
COVID_TAG = 1
MIAS_LAYOUT_TAG = 2
MIAS_IMAGE_TAG = 3
BROKEN_TAG = 4
DICOM_LABELS_TAG = 7
DICOM_PATIENTS_TAG = 11
DICOM_FILM_TAG = 13
DICOM_BROKEN_TAG = 17


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def resolve_counts(
    fn: str,
    classes: Sequence[str],
    per_class: int | None,
    counts: Sequence[int] | None,
    default: list[int],
) -> list[int]:
    """One count per class from `counts`, else `per_class` for each, else `default`.

    Raises ValueError, naming `fn`, on a non-sequence, a wrong length or a negative or non-int count.
    """
    if counts is not None:
        if isinstance(counts, (str, bytes, Mapping)) or not hasattr(counts, "__len__"):
            raise ValueError(
                f"{fn}: counts must be a sequence of {len(classes)} ints, got {counts!r}; "
                f"pass one count per class in order {list(classes)}"
            )
        counts = list(counts)
        if len(counts) != len(classes):
            raise ValueError(
                f"{fn}: counts has {len(counts)} values but there are {len(classes)} classes; "
                f"pass one count per class in order {list(classes)}"
            )
        bad = [c for c in counts if not _is_int(c) or c < 0]
        if bad:
            raise ValueError(
                f"{fn}: counts must be non-negative ints, got {list(counts)!r}; fix the value(s) {bad!r}"
            )
        return [int(c) for c in counts]
    if per_class is not None:
        if not _is_int(per_class) or per_class < 0:
            raise ValueError(
                f"{fn}: per_class must be a non-negative int, got {per_class!r}; pass e.g. per_class=20"
            )
        return [int(per_class)] * len(classes)
    return list(default)


def check_size(fn: str, size) -> None:
    """Raise ValueError, naming `fn`, unless `size` is an int of at least MIN_SIZE."""
    if not _is_int(size) or size < MIN_SIZE:
        raise ValueError(f"{fn}: size must be an int >= {MIN_SIZE}, got {size!r}; pass a larger size")


def check_seed(fn: str, seed) -> None:
    """Raise ValueError, naming `fn`, unless `seed` is a non-negative int."""
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"{fn}: seed must be a non-negative int, got {seed!r}; pass e.g. seed=0")


def prepare_dir(fn: str, out_dir) -> Path:
    """`out_dir` as a Path, created if missing; ValueError, naming `fn`, if it is a file."""
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{fn}: out_dir {str(path)!r} is a file; pass a directory path")
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_image(image: np.ndarray, path: Path) -> None:
    """uint8 [H, W] -> 8-bit grayscale PNG or binary PGM (chosen by the suffix)."""
    Image.fromarray(image).save(path)


def write_text(path: Path, text: str) -> None:
    """Write `text` as UTF-8 with LF line ends, whatever the platform."""
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


@contextmanager
def progress_bar(enabled: bool, description: str, total: int) -> Iterator:
    """Yield a function that advances a rich progress bar by one (a no-op when not `enabled`)."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)
