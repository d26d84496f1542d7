"""Decode checks and the one image normalization: which files are usable images, and how.

Normalization (ingest accepts a file only if it can be normalized; preprocess applies it):

* PNG and JPEG files are kept byte for byte: TensorFlow decodes them the same way in
  preprocessing and, inside the served model, for clients that send the same file.
* Every other format (PGM, BMP, GIF, TIFF, ...) is re-encoded losslessly as PNG first:
  bilevel becomes 8-bit grayscale, 8-bit grayscale (with or without alpha) stays so,
  16-bit grayscale becomes a 16-bit PNG, palette becomes RGB (RGBA if it has a
  transparent colour), RGB and RGBA stay. TensorFlow's BMP decoder misreads palette
  BMPs, so BMPs are never passed through.
* `medkfp.imaging.decode_and_resize` then gives every image three 8-bit channels:
  grayscale is repeated, alpha dropped (not composited), palette expanded, and 16-bit
  scaled to 8 bits by keeping the high byte (tf.image.convert_image_dtype), exactly as
  for a 16-bit PNG sent to the served model.

Unsupported, and rejected: CMYK, YCbCr, LAB, HSV, floating-point pixels, integer pixels
beyond 16 bits, and multi-frame files (animations, multi-page TIFF).
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from medkfp import vocab

# Largest accepted image in pixels (width x height): the one limit of vocab.
DEFAULT_MAX_PIXELS = vocab.MAX_IMAGE_PIXELS

PASS_THROUGH_FORMATS = {"PNG", "JPEG"}
PASS_THROUGH_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "I;16", "I;16B", "I;16L"}
SUPPORTED_MODES = PASS_THROUGH_MODES | {"I", "I;16N", "RGBX", "La"}
SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


@dataclass(frozen=True)
class Rejection:
    """Why a file is not a usable image: a short kind (for counting) and the full reason."""

    kind: str
    reason: str


def check_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[dict | None, Rejection | None]:
    """Decode-check one file's bytes.

    Returns (info, None) for a usable image, info = {width, height, mode, format}, or
    (None, Rejection) naming why not: empty, not_image, too_many_pixels, multi_frame,
    unsupported_mode or corrupt.
    """
    if not data:
        return None, Rejection("empty", "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit decides; Pillow's warning below its hard limit is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return _check_decoded(data, max_pixels)
    except Image.DecompressionBombError as e:
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        return None, _too_many_pixels(pixels.group(1) + " pixels, " if pixels else "", max_pixels)
    except UnidentifiedImageError:
        known = _image_signature(data)
        if known:  # an image whose header no decoder accepts: damaged, not foreign
            return None, Rejection("corrupt", f"truncated or corrupt image ({known} header unreadable)")
        return None, Rejection("not_image", f"not an image ({_sniff(data)})")
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, ZeroDivisionError) as e:
        # Pillow's decoders signal damaged data with any of these.
        return None, Rejection("corrupt", f"truncated or corrupt image ({_one_line(e)})")


def _check_decoded(data: bytes, max_pixels: int) -> tuple[dict | None, Rejection | None]:
    with Image.open(io.BytesIO(data)) as image:
        info = {"width": image.width, "height": image.height, "mode": image.mode, "format": image.format}
        if image.width * image.height > max_pixels:
            return None, _too_many_pixels(f"{image.width} x {image.height}, ", max_pixels)
        if image.width < 1 or image.height < 1:
            return None, Rejection("corrupt", f"truncated or corrupt image (size {image.size})")
        frames = getattr(image, "n_frames", 1)
        if frames > 1:
            return None, Rejection(
                "multi_frame", f"unsupported: {frames} frames in one file (give one image per file)"
            )
        if image.mode not in SUPPORTED_MODES:
            return None, Rejection(
                "unsupported_mode", f"unsupported mode {image.mode} (convert to grayscale or RGB)"
            )
        image.verify()  # checksums (PNG CRCs) that a plain decode skips
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # the full decode: truncated and corrupt pixel data fail here
        if image.mode == "I":
            low, high = image.getextrema()
            if low < 0 or high > 65535:
                return None, Rejection(
                    "unsupported_mode", "unsupported mode I with values beyond 16 bits (rescale to 16 bits)"
                )
    return info, None


def _too_many_pixels(size: str, max_pixels: int) -> Rejection:
    return Rejection("too_many_pixels", f"over the pixel limit ({size}limit {max_pixels} pixels)")


SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"P5", "PGM"),
    (b"P2", "PGM"),
)


def _image_signature(data: bytes) -> str | None:
    """The image format whose magic bytes `data` starts with, if any."""
    return next((name for magic, name in SIGNATURES if data.startswith(magic)), None)


def _sniff(data: bytes) -> str:
    """A hint at what a non-image file is, for the reject reason."""
    head = data[:512]
    for magic, what in (
        (b"PK\x03\x04", "a zip archive"),
        (b"\x1f\x8b", "gzip data"),
        (b"%PDF", "a PDF document"),
        (b"DICM", "DICOM"),
    ):
        if head.startswith(magic) or (magic == b"DICM" and data[128:132] == magic):
            return f"looks like {what}"
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        return "looks like an HTML page"
    try:
        head.decode("utf-8")
        return "looks like text"
    except UnicodeDecodeError:
        return "no decoder recognises it"


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def passes_through(image_format: str, mode: str) -> bool:
    """Whether tf.io.decode_image takes an image of this format and mode as it is."""
    return image_format in PASS_THROUGH_FORMATS and mode in PASS_THROUGH_MODES


def to_decodable(data: bytes) -> bytes:
    """The bytes to hand to tf.io.decode_image, per the module's normalization rules."""
    with Image.open(io.BytesIO(data)) as image:
        if passes_through(image.format, image.mode):
            return data
        image.load()
        return _png(_normalized(image))


def _normalized(image: Image.Image) -> Image.Image:
    if image.mode in SIXTEEN_BIT_MODES:
        array = np.asarray(image)
        return Image.fromarray(array.astype(np.uint16))  # uint16 -> mode I;16
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("P", "PA"):
        return image.convert("RGBA" if "transparency" in image.info or image.mode == "PA" else "RGB")
    if image.mode == "RGBX":
        return image.convert("RGB")
    if image.mode == "La":  # premultiplied alpha
        return image.convert("LA")
    return image


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    # Fast deflate: these PNGs live only until preprocess resizes them.
    image.save(out, "PNG", compress_level=1)
    return out.getvalue()
