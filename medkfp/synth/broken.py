"""The broken-file corpus: files a dataset folder should not hold, one per way ingest rejects them."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from medkfp.synth.archive import zip_bytes
from medkfp.synth.common import BROKEN_TAG


def broken_files(seed: int = 0) -> dict[str, tuple[bytes, str]]:
    """A corpus of files a dataset folder should not hold, for ingest's checks.

    Returns {file name: (bytes, kind)} where kind is the reject kind ingest reports:
    empty, corrupt (truncated or damaged data), not_image, unsupported_mode, multi_frame
    or too_many_pixels. Seventeen files, one per way of being broken; the same seed gives
    the same bytes.
    """
    rng = np.random.default_rng([seed, BROKEN_TAG])
    gray = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    png = _encoded(Image.fromarray(gray), "PNG")
    jpeg = _encoded(Image.fromarray(np.stack([gray] * 3, axis=-1)), "JPEG", quality=90)
    negative = Image.fromarray(255 - gray)
    animated = _encoded(Image.fromarray(gray), "GIF", save_all=True, append_images=[negative])
    return {
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
        "archive.png": (zip_bytes({"inner.png": png}), "not_image"),
        "cmyk.jpg": (_encoded(Image.fromarray(gray).convert("CMYK"), "JPEG"), "unsupported_mode"),
        "float.tif": (_encoded(Image.fromarray(gray.astype(np.float32) / 255), "TIFF"), "unsupported_mode"),
        "int32.tif": (_encoded(Image.fromarray(gray.astype(np.int32) * 100000), "TIFF"), "unsupported_mode"),
        "animated.gif": (animated, "multi_frame"),
        "bomb.png": (_png_ihdr(100_000, 100_000), "too_many_pixels"),
    }


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
