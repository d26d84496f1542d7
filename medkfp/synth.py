"""Deterministic synthetic COVID-19 Radiography and mini-MIAS datasets in the real on-disk layouts.

The images are not medical images: they are cartoons with the geometry of the real ones (a chest
film with two lungs, a breast on a mammogram) and a class-dependent pattern strong enough for a
small CNN to learn from 32-64 px thumbnails in a few epochs. They exist so that ingest, training,
evaluation and serving can run end to end without the real downloads.

Every image is drawn from its own generator seeded from (seed, dataset, class or film number), so
the same seed gives byte-identical files (with the same numpy and Pillow). A COVID image does not
change when other counts change; a MIAS film's class comes from a seeded shuffle of all counts.
Unlike the real download, COVID masks have the image's size (the real masks are 256 x 256).
"""

from __future__ import annotations

import importlib.util
import io
import numbers
import os
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from medkfp import vocab
from medkfp.vocab import COVID_CLASSES, COVID_ROOT, MIAS_CLASSES

__all__ = [
    "COVID_DEFAULT_PER_CLASS",
    "MIAS_COORDINATE_SIZE",
    "MIAS_DIR",
    "MIAS_INFO_FILE",
    "MIAS_INFO_HEADER",
    "MIAS_STUDY_COUNTS",
    "MIN_SIZE",
    "broken_files",
    "synth_covid",
    "synth_mias",
    "write_broken_files",
]

COVID_DEFAULT_PER_CLASS = 20
COVID_README = "README.md.txt"

MIAS_DIR = vocab.MIAS_DIR
MIAS_INFO_FILE = vocab.MIAS_INFO_FILE
MIAS_INFO_HEADER = "REFNUM BG CLASS SEVERITY X Y RADIUS"
# Info.txt coordinates are in the 1024 x 1024 frame of the real films, origin bottom-left.
MIAS_COORDINATE_SIZE = 1024
# Images per class in the study (322 films in all).
MIAS_STUDY_COUNTS = {
    "ARCH": 19,
    "ASYM": 15,
    "CALC": 25,
    "CIRC": 23,
    "MISC": 14,
    "NORM": 207,
    "SPIC": 19,
}
MIAS_MAX_IMAGES = 999  # mdbNNN has three digits

MIN_SIZE = 16

_COVID_TAG = 1
_MIAS_LAYOUT_TAG = 2
_MIAS_IMAGE_TAG = 3
_BROKEN_TAG = 4

# Lesion radius ranges in the 1024 frame, per MIAS class.
# Lesion radius ranges in the 1024 frame, per MIAS class: within the range of the real radii
# but on the large side, so that shapes survive downscaling to 32-64 px.
_MIAS_RADIUS = {
    "ARCH": (70, 150),
    "ASYM": (90, 170),
    "CALC": (60, 130),
    "CIRC": (50, 120),
    "MISC": (60, 140),
    "SPIC": (50, 120),
}
# Sigma of one calcification, as a fraction of the side (6-9 px of a 1024 film).
_SPECK_SIGMA = (0.006, 0.009)
_TISSUES = ("F", "G", "D")
# tissue -> (base level, texture amplitude)
_TISSUE_LOOK = {"F": (70.0, 12.0), "G": (92.0, 20.0), "D": (118.0, 28.0)}


# --- public API -------------------------------------------------------------------------------


def synth_covid(
    out_dir: str | os.PathLike,
    per_class: int | None = None,
    counts: Sequence[int] | None = None,
    size: int = 299,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, int]:
    """Write a synthetic Kaggle "COVID-19 Radiography Database" under `out_dir`.

    Layout, as in the real download::

        out_dir/COVID-19_Radiography_Dataset/
            README.md.txt
            <Class>.metadata.xlsx                  (only when an xlsx writer is installed)
            <Class>/images/<Class>-<n>.png         n = 1, 2, ...
            <Class>/masks/<Class>-<n>.png          binary lung mask, 0/255

    for the classes COVID, Lung_Opacity, Normal and "Viral Pneumonia" (with the space). Images
    and masks are 8-bit grayscale ("L") PNGs of `size` x `size`. Each image is a cartoon chest
    film (dark background, two bright lungs, ribs, noise) with a class pattern: COVID has several
    bright round blobs in the lower/outer lung fields, Lung_Opacity one large diffuse haze,
    Normal clean lungs, Viral Pneumonia diagonal reticular streaks. Position, size, brightness
    and noise vary per image. Existing files with the same names are overwritten; other files
    are left alone.

    Args:
        out_dir: directory to write into (created if missing).
        per_class: images per class; default 20.
        counts: four image counts in COVID_CLASSES order; overrides `per_class`.
        size: image side in pixels, at least 16 (the real images are 299).
        seed: non-negative seed; the same seed gives byte-identical files.
        progress: show a rich progress bar.

    Returns:
        {class name: number of images written}, in COVID_CLASSES order.

    Raises:
        ValueError: on a bad count, size, seed or an `out_dir` that is a file.
    """
    n_per_class = _resolve_counts(
        "synth_covid", COVID_CLASSES, per_class, counts, [COVID_DEFAULT_PER_CLASS] * 4
    )
    _check_size("synth_covid", size)
    _check_seed("synth_covid", seed)
    root = _prepare_dir("synth_covid", out_dir) / COVID_ROOT
    root.mkdir(parents=True, exist_ok=True)

    result = dict(zip(COVID_CLASSES, n_per_class, strict=True))
    _write_text(root / COVID_README, _covid_readme(result, size, seed))
    for name, count in result.items():
        (root / name / "images").mkdir(parents=True, exist_ok=True)
        (root / name / "masks").mkdir(parents=True, exist_ok=True)
        rows = [(f"{name}-{n}", "PNG", f"{size}*{size}", "synthetic") for n in range(1, count + 1)]
        _write_xlsx(root / f"{name}.metadata.xlsx", ("FILE NAME", "FORMAT", "SIZE", "URL"), rows)

    grid = _Grid(size)
    with _progress_bar(progress, "COVID-19 radiography", sum(n_per_class)) as advance:
        for class_index, (name, count) in enumerate(result.items()):
            images, masks = root / name / "images", root / name / "masks"
            for n in range(1, count + 1):
                rng = np.random.default_rng([seed, _COVID_TAG, class_index, n])
                image, mask = _covid_image(rng, class_index, grid)
                _save(image, images / f"{name}-{n}.png")
                _save(mask, masks / f"{name}-{n}.png")
                advance()
    return result


def synth_mias(
    out_dir: str | os.PathLike,
    per_class: int | None = None,
    counts: Sequence[int] | None = None,
    size: int = 1024,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, int]:
    """Write a synthetic mini-MIAS mammography set under `out_dir`.

    Layout, as in the real download::

        out_dir/all-mias/Info.txt
        out_dir/all-mias/mdb001.pgm, mdb002.pgm, ...   binary (P5) 8-bit PGM, size x size

    Info.txt starts with the header ``REFNUM BG CLASS SEVERITY X Y RADIUS`` followed by one row
    per abnormality: reference, background tissue (F/G/D), class, severity (B/M), x, y, radius.
    x, y and radius are in the 1024 x 1024 frame of the real films with the origin at the
    bottom-left, whatever `size` is. NORM rows stop after the class with a trailing blank
    (``mdb003 D NORM ``); a few images have two rows (two lesions of the same class); a few
    CALC rows have a severity but no centre (``mdb238 F CALC M``) and their calcifications are
    scattered over the whole breast. Films come in left/right pairs (mdb001+mdb002, ...): the
    two films of a pair share the tissue type and are mirrored (odd numbers have the chest wall
    on the left edge); their classes are drawn independently. Each lesion is a bright shape at
    its centre: a sharp disc (CIRC), a star with a dense core (SPIC), speckles (CALC), a
    lobulated ill-defined mass (MISC), converging lines without a core (ARCH) or a large faint
    elongated density (ASYM); NORM films have none.

    Args:
        out_dir: directory to write into (created if missing).
        per_class: images per class; default: the study's counts (MIAS_STUDY_COUNTS, 322).
        counts: seven image counts in MIAS_CLASSES order; overrides `per_class`.
        size: image side in pixels, at least 16 (the real films are 1024).
        seed: non-negative seed; the same seed gives byte-identical files.
        progress: show a rich progress bar.

    Returns:
        {class name: number of images whose (first) Info.txt row has that class}, in
        MIAS_CLASSES order.

    Raises:
        ValueError: on a bad count, more than 999 images, a bad size or seed, or an
            `out_dir` that is a file.
    """
    n_per_class = _resolve_counts(
        "synth_mias",
        MIAS_CLASSES,
        per_class,
        counts,
        [MIAS_STUDY_COUNTS[c] for c in MIAS_CLASSES],
    )
    total = sum(n_per_class)
    if total > MIAS_MAX_IMAGES:
        raise ValueError(
            f"synth_mias: {total} images requested but mdbNNN names hold at most "
            f"{MIAS_MAX_IMAGES}; lower per_class/counts"
        )
    _check_size("synth_mias", size)
    _check_seed("synth_mias", seed)
    folder = _prepare_dir("synth_mias", out_dir) / MIAS_DIR
    folder.mkdir(parents=True, exist_ok=True)

    films = _mias_layout(n_per_class, seed)
    grid = _Grid(size)
    lines = [MIAS_INFO_HEADER]
    with _progress_bar(progress, "mini-MIAS", total) as advance:
        for film in films:
            rng = np.random.default_rng([seed, _MIAS_IMAGE_TAG, film["number"]])
            image, rows = _mias_image(rng, grid, film)
            _save(image, folder / f"{film['ref']}.pgm")
            lines.extend(rows)
            advance()
    _write_text(folder / MIAS_INFO_FILE, "\n".join(lines) + "\n")
    return dict(zip(MIAS_CLASSES, n_per_class, strict=True))


def broken_files(seed: int = 0) -> dict[str, tuple[bytes, str]]:
    """A corpus of files a dataset folder should not hold, for ingest's checks.

    Returns {file name: (bytes, kind)} where kind is the reject kind ingest reports:
    empty, corrupt (truncated or damaged data), not_image, unsupported_mode, multi_frame
    or too_many_pixels. Seventeen files, one per way of being broken; the same seed gives
    the same bytes.
    """
    rng = np.random.default_rng([seed, _BROKEN_TAG])
    gray = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    png = _encoded(Image.fromarray(gray), "PNG")
    jpeg = _encoded(Image.fromarray(np.stack([gray] * 3, axis=-1)), "JPEG", quality=90)
    frames = [Image.fromarray(gray), Image.fromarray(255 - gray)]
    animated = io.BytesIO()
    frames[0].save(animated, "GIF", save_all=True, append_images=frames[1:])
    files = {
        "empty.png": (b"", "empty"),
        "cut-in-header.png": (png[:60], "corrupt"),
        "cut-in-pixels.png": (png[: len(png) * 2 // 3], "corrupt"),
        "bad-crc.png": (_png_with(png, _flip_first_byte, fix_crc=False), "corrupt"),
        "bad-deflate.png": (_png_with(png, lambda data: data[:2] + b"\xff" * (len(data) - 2)), "corrupt"),
        "zero-width.png": (_png_ihdr(0, 48), "corrupt"),
        "cut-in-half.jpg": (jpeg[: len(jpeg) // 2], "corrupt"),
        "short-rows.pgm": (b"P5\n64 64\n255\n" + bytes(100), "corrupt"),
        "notes.png": (b"radiologist notes, not an image\n" * 4, "not_image"),
        "download-page.jpg": (b"<!DOCTYPE html><html><body>Sign in to download</body></html>", "not_image"),
        "noise.bmp": (rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not_image"),
        "archive.png": (_zip_bytes({"inner.png": png}), "not_image"),
        "cmyk.jpg": (_encoded(Image.fromarray(gray).convert("CMYK"), "JPEG"), "unsupported_mode"),
        "float.tif": (_encoded(Image.fromarray(gray.astype(np.float32) / 255), "TIFF"), "unsupported_mode"),
        "int32.tif": (_encoded(Image.fromarray(gray.astype(np.int32) * 100000), "TIFF"), "unsupported_mode"),
        "animated.gif": (animated.getvalue(), "multi_frame"),
        "bomb.png": (_png_ihdr(100_000, 100_000), "too_many_pixels"),
    }
    return files


def write_broken_files(folder: str | os.PathLike, seed: int = 0) -> dict[str, str]:
    """Write broken_files(seed) into `folder`; returns {file name: expected reject kind}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    kinds = {}
    for name, (data, kind) in broken_files(seed).items():
        (folder / name).write_bytes(data)
        kinds[name] = kind
    return kinds


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _flip_first_byte(data: bytes) -> bytes:
    return bytes([data[0] ^ 0xFF]) + data[1:]


def _png_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    chunks, i = [], 8
    while i < len(png):
        (length,) = struct.unpack(">I", png[i : i + 4])
        chunks.append((png[i + 4 : i + 8], png[i + 8 : i + 8 + length]))
        i += 12 + length
    return chunks


def _chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _png_with(png: bytes, change, fix_crc: bool = True) -> bytes:
    """The PNG with its IDAT data changed; with fix_crc=False the old checksum is kept."""
    out = png[:8]
    for kind, data in _png_chunks(png):
        if kind == b"IDAT":
            crc = None if fix_crc else zlib.crc32(kind + data)
            out += _chunk(kind, change(data), crc)
        else:
            out += _chunk(kind, data)
    return out


def _png_ihdr(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height 8-bit gray pixels (a bomb if large)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = zlib.compress(b"\x00" * (min(width, 64) + 1))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", row) + _chunk(b"IEND", b"")


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=_FIXED_ZIP_TIME), data)
    return out.getvalue()


# --- validation -------------------------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _resolve_counts(
    fn: str,
    classes: Sequence[str],
    per_class: int | None,
    counts: Sequence[int] | None,
    default: list[int],
) -> list[int]:
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


def _check_size(fn: str, size) -> None:
    if not _is_int(size) or size < MIN_SIZE:
        raise ValueError(f"{fn}: size must be an int >= {MIN_SIZE}, got {size!r}; pass a larger size")


def _check_seed(fn: str, seed) -> None:
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"{fn}: seed must be a non-negative int, got {seed!r}; pass e.g. seed=0")


def _prepare_dir(fn: str, out_dir) -> Path:
    path = Path(out_dir)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{fn}: out_dir {str(path)!r} is a file; pass a directory path")
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- files ------------------------------------------------------------------------------------


def _save(image: np.ndarray, path: Path) -> None:
    """uint8 [H, W] -> 8-bit grayscale PNG or binary PGM (chosen by the suffix)."""
    Image.fromarray(image).save(path)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_FIXED_W3CDTF = "2000-01-01T00:00:00Z"
_CORE_DATES = re.compile(rb"(<dcterms:(?:created|modified)\b[^>]*>)[^<]*(</dcterms:)")


def _write_xlsx(path: Path, header: Sequence[str], rows: list[tuple]) -> bool:
    """Write a one-sheet workbook; False (nothing written) when no xlsx writer is installed.

    openpyxl is used when installed, otherwise pandas with the xlsxwriter engine. When neither
    is installed (the project does not depend on either) the `<Class>.metadata.xlsx` files are
    skipped: nothing in medkfp reads them, and a CSV-content file named .xlsx would be a lie.
    The workbook is re-zipped with fixed timestamps so the bytes depend on the content only.
    """
    buffer = io.BytesIO()
    if importlib.util.find_spec("openpyxl") is not None:
        import openpyxl

        workbook = openpyxl.Workbook()
        sheet = workbook.active
        sheet.title = "Sheet1"
        sheet.append(list(header))
        for row in rows:
            sheet.append(list(row))
        workbook.save(buffer)
    elif importlib.util.find_spec("xlsxwriter") is not None:
        import pandas as pd

        pd.DataFrame(rows, columns=list(header)).to_excel(buffer, index=False, engine="xlsxwriter")
    else:
        return False
    path.write_bytes(_reproducible_zip(buffer.getvalue()))
    return True


def _reproducible_zip(data: bytes) -> bytes:
    """The same archive with fixed member timestamps and fixed docProps/core.xml dates."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            content = src.read(info.filename)
            if info.filename == "docProps/core.xml":
                content = _CORE_DATES.sub(lambda m: m.group(1) + _FIXED_W3CDTF.encode() + m.group(2), content)
            member = zipfile.ZipInfo(info.filename, date_time=_FIXED_ZIP_TIME)
            member.compress_type = zipfile.ZIP_DEFLATED
            member.external_attr = 0o600 << 16
            dst.writestr(member, content)
    return out.getvalue()


def _covid_readme(result: dict[str, int], size: int, seed: int) -> str:
    lines = [
        "# COVID-19 Radiography Database (SYNTHETIC)",
        "",
        "Generated by medkfp.synth.synth_covid for tests and demos. These are NOT medical",
        "images: each is a cartoon chest film with a class-dependent pattern.",
        "",
        f"Image size: {size} x {size}, 8-bit grayscale PNG. Seed: {seed}.",
        "",
        "| Class | Images | Pattern |",
        "|---|---|---|",
    ]
    patterns = {
        "COVID": "several bright round blobs, lower/outer lung fields",
        "Lung_Opacity": "one large diffuse hazy region",
        "Normal": "clean lungs",
        "Viral Pneumonia": "diagonal reticular streaks",
    }
    lines += [f"| {name} | {count} | {patterns[name]} |" for name, count in result.items()]
    lines += [
        "",
        "Each class folder holds images/<Class>-<n>.png and masks/<Class>-<n>.png (binary",
        "lung masks, 0/255), numbered from 1.",
    ]
    return "\n".join(lines) + "\n"


@contextmanager
def _progress_bar(enabled: bool, description: str, total: int) -> Iterator:
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


# --- drawing helpers --------------------------------------------------------------------------


class _Grid:
    """Pixel-centre coordinates in [0, 1]: x as a row vector, y (downwards) as a column."""

    def __init__(self, size: int):
        self.size = size
        c = (np.arange(size, dtype=np.float32) + 0.5) / size
        self.x = c[None, :]
        self.y = c[:, None]


def _window(grid: _Grid, cx: float, cy: float, extent: float):
    """Slices of the square around (cx, cy) with half-side `extent`, and its dx, dy grids."""
    s = grid.size
    r0, r1 = max(0, int((cy - extent) * s)), min(s, int(np.ceil((cy + extent) * s)) + 1)
    c0, c1 = max(0, int((cx - extent) * s)), min(s, int(np.ceil((cx + extent) * s)) + 1)
    if r0 >= r1 or c0 >= c1:
        return None
    dx = grid.x[:, c0:c1] - np.float32(cx)
    dy = grid.y[r0:r1, :] - np.float32(cy)
    return (slice(r0, r1), slice(c0, c1)), dx, dy


def _add_disc(img, grid, cx, cy, radius, amp, edge=0.2) -> None:
    """Add a soft-edged disc (logistic edge of width `edge`*radius, at least half a pixel)."""
    w = _window(grid, cx, cy, radius * 1.6 + 2.0 / grid.size)
    if w is None:
        return
    sl, dx, dy = w
    soft = max(edge * radius, 0.5 / grid.size)
    d = np.sqrt(dx * dx + dy * dy)
    img[sl] += amp / (1.0 + np.exp(np.clip((d - radius) / soft, -30, 30)))


def _add_gauss(img, grid, cx, cy, sx, sy, amp, angle=0.0) -> None:
    """Add an (optionally rotated) anisotropic Gaussian, sigma at least half a pixel."""
    sx, sy = max(sx, 0.5 / grid.size), max(sy, 0.5 / grid.size)
    w = _window(grid, cx, cy, 3.2 * max(sx, sy))
    if w is None:
        return
    sl, dx, dy = w
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    u, v = dx * c + dy * s, -dx * s + dy * c
    img[sl] += amp * np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))


def _add_rays(img, grid, cx, cy, angles, lengths, width, amp) -> None:
    """Add thin bright rays from (cx, cy), fading towards their ends."""
    extent = float(np.max(lengths)) + 2.0 / grid.size
    w = _window(grid, cx, cy, extent)
    if w is None:
        return
    sl, dx, dy = w
    width = max(width, 0.7 / grid.size)
    ca = np.cos(angles).astype(np.float32)[:, None, None]
    sa = np.sin(angles).astype(np.float32)[:, None, None]
    along = dx[None] * ca + dy[None] * sa  # distance along each ray
    across = -dx[None] * sa + dy[None] * ca  # distance from its line
    length = np.asarray(lengths, dtype=np.float32)[:, None, None]
    fade = np.clip(1.0 - along / length, 0.0, 1.0) * (along > 0)
    rays = np.exp(-0.5 * (across / width) ** 2) * fade
    img[sl] += amp * rays.max(axis=0)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise, about unit variance: `cells` x `cells` normals upsampled bilinearly."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    fine = Image.fromarray(coarse).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(fine, dtype=np.float32)


def _finish(img: np.ndarray, rng: np.random.Generator, noise_sigma: float) -> np.ndarray:
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise_sigma)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --- COVID-19 radiography ---------------------------------------------------------------------


def _covid_image(rng: np.random.Generator, class_index: int, grid: _Grid):
    """One cartoon chest film of class COVID_CLASSES[class_index] and its lung mask."""
    x, y, s = grid.x, grid.y, grid.size

    # Body: dark background, a brighter torso, a bright mediastinum down the middle.
    img = np.full((s, s), rng.uniform(5, 25), dtype=np.float32)
    torso = ((x - 0.5) / rng.uniform(0.42, 0.48)) ** 2 + ((y - 0.6) / rng.uniform(0.55, 0.65)) ** 2
    img += rng.uniform(30, 50) * np.clip((1.0 - torso) / 0.1, 0.0, 1.0)
    img += rng.uniform(25, 45) * np.exp(-0.5 * ((x - 0.5) / rng.uniform(0.04, 0.06)) ** 2)

    # Lungs: two ellipses, narrow at the apex, wide at the base.
    lung_level = rng.uniform(72, 90)
    mid_y = rng.uniform(0.46, 0.52)
    lungs = []
    for side in (-1, 1):  # -1: lung on the image's left, +1: on its right
        cx = 0.5 + side * rng.uniform(0.17, 0.21)
        cy = mid_y + rng.uniform(-0.015, 0.015)
        ax, ay = rng.uniform(0.11, 0.14), rng.uniform(0.26, 0.31)
        taper = np.clip((y - (cy - ay)) / (2 * ay), 0.0, 1.0)
        ellipse = ((x - cx) / (ax * (0.6 + 0.55 * taper))) ** 2 + ((y - cy) / ay) ** 2
        soft = np.clip((1.0 - ellipse) / 0.25, 0.0, 1.0)
        lungs.append(
            {
                "side": side,
                "cx": cx,
                "cy": cy,
                "ax": ax,
                "ay": ay,
                "soft": soft,
                "inside": ellipse < 1.0,
            }
        )
    both = np.maximum(lungs[0]["soft"], lungs[1]["soft"])
    img += lung_level * both

    # Ribs: faint curved horizontal bands over the lungs.
    period = rng.uniform(0.07, 0.09)
    phase = rng.uniform(0, 2 * np.pi)
    bands = 0.5 + 0.5 * np.cos(2 * np.pi * (y + 0.6 * (x - 0.5) ** 2) / period + phase)
    img += rng.uniform(4, 8) * bands * both

    name = COVID_CLASSES[class_index]
    pattern = np.zeros((s, s), dtype=np.float32)
    if name == "COVID":
        # Several bright round blobs in the lower, outer lung fields.
        for _ in range(int(rng.integers(4, 8))):
            lung = lungs[int(rng.integers(0, 2))]
            bx = lung["cx"] + lung["side"] * rng.uniform(0.2, 0.75) * lung["ax"]
            by = lung["cy"] + rng.uniform(0.05, 0.7) * lung["ay"]
            _add_disc(pattern, grid, bx, by, rng.uniform(0.028, 0.05), rng.uniform(75, 110))
        pattern *= 0.3 + 0.7 * both
    elif name == "Lung_Opacity":
        # One large diffuse haze, mottled, confined to one lung.
        lung = lungs[int(rng.integers(0, 2))]
        hx = lung["cx"] + rng.uniform(-0.3, 0.3) * lung["ax"]
        hy = lung["cy"] + rng.uniform(-0.35, 0.3) * lung["ay"]
        _add_gauss(
            pattern,
            grid,
            hx,
            hy,
            rng.uniform(0.065, 0.095),
            rng.uniform(0.11, 0.17),
            rng.uniform(85, 110),
            angle=rng.uniform(-0.3, 0.3),
        )
        mottling = np.clip(0.75 + 0.35 * _smooth_noise(rng, s, 12), 0.3, 1.2)
        pattern *= mottling * lung["soft"]
    elif name == "Viral Pneumonia":
        # Diagonal streaks crossed by fainter ones: a reticular pattern over both lungs.
        angle = rng.choice([-1.0, 1.0]) * rng.uniform(0.55, 1.0)
        pitch = rng.uniform(0.10, 0.14)
        streaks = np.zeros((s, s), dtype=np.float32)
        for a, weight in ((angle, 1.0), (angle + np.pi / 2 + rng.uniform(-0.3, 0.3), 0.45)):
            u = x * np.float32(np.cos(a)) + y * np.float32(np.sin(a))
            wave = 0.5 + 0.5 * np.cos(2 * np.pi * u / pitch + rng.uniform(0, 2 * np.pi))
            streaks += weight * wave**3
        hilar = 0.6 + 0.4 * np.exp(-0.5 * ((x - 0.5) / 0.2) ** 2)
        pattern = rng.uniform(55, 80) * streaks * hilar * both
    # Normal: clean lungs.

    img += pattern
    img *= rng.uniform(0.95, 1.05)
    image = _finish(img, rng, rng.uniform(3, 8))
    mask = np.where(lungs[0]["inside"] | lungs[1]["inside"], 255, 0).astype(np.uint8)
    return image, mask


# --- mini-MIAS --------------------------------------------------------------------------------


def _mias_layout(n_per_class: Sequence[int], seed: int) -> list[dict]:
    """Films in number order: class, tissue, side, severity, lesion count, centre or not."""
    rng = np.random.default_rng([seed, _MIAS_LAYOUT_TAG])
    labels = [c for c, n in zip(MIAS_CLASSES, n_per_class, strict=True) for _ in range(n)]
    labels = [labels[i] for i in rng.permutation(len(labels))]
    films = []
    tissue = "F"
    for i, label in enumerate(labels):
        number = i + 1
        if number % 2 == 1:  # a new left/right pair: one woman, one tissue type
            tissue = _TISSUES[int(rng.integers(0, 3))]
        films.append(
            {
                "number": number,
                "ref": f"mdb{number:03d}",
                "class": label,
                "tissue": tissue,
                "left": number % 2 == 1,
                "severity": None if label == "NORM" else ("B", "M")[int(rng.integers(0, 2))],
                "lesions": 0 if label == "NORM" else 1,
                "centre": label != "NORM",
            }
        )
    # A few CALC films list a severity but no centre: diffuse calcifications.
    calc = [f for f in films if f["class"] == "CALC"]
    if len(calc) >= 2:
        for i in rng.choice(len(calc), size=max(1, len(calc) // 8), replace=False):
            calc[int(i)]["centre"] = False
    # A few films have two abnormalities of the same class: two Info.txt rows.
    located = [f for f in films if f["centre"]]
    if len(located) >= 3:
        for i in rng.choice(len(located), size=max(1, len(located) // 12), replace=False):
            located[int(i)]["lesions"] = 2
    return films


def _mias_image(rng: np.random.Generator, grid: _Grid, film: dict):
    """One cartoon mammogram for `film` and its Info.txt rows."""
    x, y, s = grid.x, grid.y, grid.size
    u = x if film["left"] else 1.0 - x  # distance from the chest wall

    # Breast: a half ellipse on the chest wall; pectoral muscle in the upper corner.
    a, b = rng.uniform(0.62, 0.8), rng.uniform(0.40, 0.47)
    cy0 = 0.5 + rng.uniform(-0.04, 0.04)
    ellipse = (u / a) ** 2 + ((y - cy0) / b) ** 2
    breast = np.clip((1.0 - ellipse) / 0.06, 0.0, 1.0)
    pa, pb = rng.uniform(0.18, 0.3), rng.uniform(0.3, 0.45)
    pectoral = np.clip((1.0 - (u / pa + y / pb)) / 0.04, 0.0, 1.0)

    base, texture_amp = _TISSUE_LOOK[film["tissue"]]
    texture = 0.6 * _smooth_noise(rng, s, 10) + 0.4 * _smooth_noise(rng, s, 28)
    glandular = np.clip(1.0 - ellipse, 0.0, 1.0) ** 0.5  # denser towards the chest wall
    tissue = base * rng.uniform(0.9, 1.1) * (0.75 + 0.25 * glandular) + texture_amp * texture
    img = rng.uniform(2, 12) + breast * (tissue + rng.uniform(35, 55) * pectoral)
    img = img.astype(np.float32)

    def inside_point(limit: float) -> tuple[float, float]:
        """(u, y) inside the breast (ellipse value < limit) and off the pectoral muscle."""
        for _ in range(1000):
            pu, py = rng.uniform(0.03, a), rng.uniform(cy0 - b, cy0 + b)
            if (pu / a) ** 2 + ((py - cy0) / b) ** 2 < limit and pu / pa + py / pb > 1.25:
                return pu, py
        return 0.3 * a, cy0  # unreachable in practice; stays deterministic

    label, ref, bg = film["class"], film["ref"], film["tissue"]
    if label == "NORM":
        return _finish(img, rng, rng.uniform(2, 5)), [f"{ref} {bg} NORM "]

    rows = []
    if not film["centre"]:  # diffuse calcifications over the whole breast
        for _ in range(int(rng.integers(40, 80))):
            pu, py = inside_point(0.8)
            px = pu if film["left"] else 1.0 - pu
            sigma = rng.uniform(*_SPECK_SIGMA)
            _add_gauss(img, grid, px, py, sigma, sigma, rng.uniform(110, 150))
        rows.append(f"{ref} {bg} CALC {film['severity']}")
        return _finish(img, rng, rng.uniform(2, 5)), rows

    centres: list[tuple[float, float, float]] = []
    for _ in range(film["lesions"]):
        lo, hi = _MIAS_RADIUS[label]
        radius = int(rng.integers(lo, hi + 1))
        for _ in range(50):  # keep a second lesion clear of the first
            pu, py = inside_point(0.55)
            px = pu if film["left"] else 1.0 - pu
            X = int(round(px * MIAS_COORDINATE_SIZE))
            Y = int(round((1.0 - py) * MIAS_COORDINATE_SIZE))
            if all(np.hypot(X - cx, Y - cy) > radius + r for cx, cy, r in centres):
                break
        centres.append((X, Y, radius))
        rows.append(f"{ref} {bg} {label} {film['severity']} {X} {Y} {radius}")
        # Back to the image frame: y origin top-left, coordinates as fractions of the side.
        _draw_lesion(
            img,
            grid,
            rng,
            label,
            X / MIAS_COORDINATE_SIZE,
            1.0 - Y / MIAS_COORDINATE_SIZE,
            radius / MIAS_COORDINATE_SIZE,
        )
    return _finish(img, rng, rng.uniform(2, 5)), rows


def _draw_lesion(img, grid, rng, label: str, cx: float, cy: float, r: float) -> None:
    """Add the class-specific bright shape of radius `r` centred on (cx, cy), image fractions."""
    if label == "CIRC":  # well-defined round mass
        _add_disc(img, grid, cx, cy, r, rng.uniform(85, 115), edge=0.06)
    elif label == "SPIC":  # dense core with long radiating spicules
        _add_disc(img, grid, cx, cy, 0.35 * r, rng.uniform(90, 110), edge=0.3)
        k = int(rng.integers(8, 14))
        angles = rng.uniform(0, 2 * np.pi, k)
        _add_rays(img, grid, cx, cy, angles, r * rng.uniform(1.1, 1.8, k), 0.07 * r, rng.uniform(70, 95))
    elif label == "CALC":  # cluster of small bright specks
        for _ in range(int(rng.integers(10, 25))):
            rho, phi = r * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
            sigma = rng.uniform(*_SPECK_SIGMA)
            _add_gauss(
                img, grid, cx + rho * np.cos(phi), cy + rho * np.sin(phi), sigma, sigma, rng.uniform(120, 160)
            )
    elif label == "MISC":  # ill-defined lobulated mass
        for _ in range(int(rng.integers(3, 6))):
            rho, phi = 0.45 * r * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
            sigma = r * rng.uniform(0.3, 0.45)
            _add_gauss(
                img, grid, cx + rho * np.cos(phi), cy + rho * np.sin(phi), sigma, sigma, rng.uniform(45, 65)
            )
    elif label == "ARCH":  # converging lines, no central mass
        k = int(rng.integers(10, 16))
        angles = rng.uniform(0, 2 * np.pi, k)
        _add_rays(img, grid, cx, cy, angles, r * rng.uniform(1.0, 1.7, k), 0.07 * r, rng.uniform(65, 85))
    elif label == "ASYM":  # large faint elongated density
        _add_gauss(
            img,
            grid,
            cx,
            cy,
            r * rng.uniform(0.6, 0.9),
            r * rng.uniform(0.3, 0.45),
            rng.uniform(55, 75),
            angle=rng.uniform(0, np.pi),
        )
    else:  # pragma: no cover - the layout only produces MIAS_CLASSES
        raise ValueError(f"unknown MIAS class {label!r}")
