"""DICOM to PNG, one documented way, with de-identification: used by ingest, predict and evaluate.

Pixels (DICOM PS3.3 C.11: the grayscale presentation pipeline):

1. Only MONOCHROME1 / MONOCHROME2 images with one sample per pixel and one frame are taken;
   everything else is rejected with the reason (colour, multi-frame, no pixel data, structured
   reports, presentation states and other non-image objects).
2. The Modality LUT: the Modality LUT Sequence, else Rescale Slope / Intercept
   (`pydicom.pixels.apply_modality_lut`).
3. The VOI transform, the first one in the header (`pydicom.pixels.apply_voi_lut`): the VOI LUT
   Sequence, else Window Center / Width with the VOI LUT Function (LINEAR, LINEAR_EXACT,
   SIGMOID). Its output range (the LUT's largest entry, or the window's output range) maps to
   0..1. Fallback when the header has neither, or an unusable one: the minimum and maximum of
   the modality values (Pixel Padding Value excluded) map to 0..1.
4. MONOCHROME1 (white = no signal) is inverted, so white means dense tissue in every image.
5. The result is rounded to an 8-bit grayscale PNG with no metadata chunk. 8 bits, because the
   window is already applied and the served model reduces every image to 8 bits anyway
   (`medkfp.imaging.decode_and_resize`), so training and serving see the same pixels.

De-identification: the header is put through the DICOM PS3.15 Annex E Basic Application
Level Confidentiality Profile (the `dicom-anonymizer` package's table of the 2026c standard,
private tags removed) before any attribute is kept, and only a short list of technical
attributes (KEPT_ATTRIBUTES) is kept from what remains. The PNG carries no header at all.
The patient (PatientID) and the study (StudyInstanceUID) become salted pseudonyms,
HMAC-SHA256 with the salt of MEDKFP_PSEUDONYM_SALT, never written anywhere; without it a
random salt is drawn once per process. Images with burned-in annotation are rejected: their
pixels may show the identifying text the header no longer has.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import secrets
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom import config as pydicom_config
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from medkfp import vocab
from medkfp.errors import UserError

# Reading stays lenient, but silent: pydicom's validation warnings quote the offending value,
# which can be a patient's name, and would carry it into the step logs.
pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
logging.getLogger("pydicom").setLevel(logging.ERROR)

SALT_ENV = vocab.PSEUDONYM_SALT_ENV
PREAMBLE = b"DICM"
SUFFIXES = (".dcm", ".dicom")
SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")
# The Annex E table of this DICOM edition, as the dicom-anonymizer package ships it.
PROFILE = "dicomfields_2026c"
PROFILE_NAME = "DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile (2026c)"
# Technical attributes kept in the manifest after de-identification: none identifies anyone.
KEPT_ATTRIBUTES = {
    "modality": "Modality",
    "view": "ViewPosition",
    "photometric": "PhotometricInterpretation",
    "bits_stored": "BitsStored",
}
# The manifest's format column of a converted DICOM file (the stored file is its PNG).
FORMAT = "DICOM"
# The manifest columns a DICOM image adds (the pseudonyms, the kept attributes, the VOI used).
COLUMNS = ("patient", "study", *KEPT_ATTRIBUTES, "windowing")
WINDOWING = (
    "Modality LUT (rescale slope/intercept), then the first VOI LUT or window centre/width of "
    "the header (fallback: min-max of the modality values), MONOCHROME1 inverted, 8-bit PNG"
)
# Rejections whose reason quotes a parser's or decoder's message.
DECODER_KINDS = ("corrupt", "unsupported_transfer_syntax")
# Header values shorter than this are not scrubbed from file names (a sex "M", a flag "Y").
MIN_SCRUB_LENGTH = 4
REMOVED = "[removed]"
# String-valued VRs: what names, IDs, dates and UIDs are stored as.
TEXT_VRS = {
    "AE",
    "AS",
    "CS",
    "DA",
    "DS",
    "DT",
    "IS",
    "LO",
    "LT",
    "PN",
    "SH",
    "ST",
    "TM",
    "UC",
    "UI",
    "UR",
    "UT",
}
# Largest image converted (width x height), read from the header before the pixels are decoded.
DEFAULT_MAX_PIXELS = vocab.MAX_IMAGE_PIXELS


class DicomRejected(UserError, ValueError):
    """A DICOM file that cannot become a training image; `kind` counts, the message says why.

    `scrub` holds the file's identifying header values, to be removed from its path before the
    path is written anywhere.
    """

    def __init__(self, kind: str, reason: str, scrub: frozenset[str] = frozenset()):
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.scrub = scrub


@dataclass
class DicomImage:
    """A converted DICOM file: the PNG, its manifest columns and what must never be stored.

    `columns` (patient and study pseudonyms, kept attributes, windowing) are safe to store;
    `sop_instance_uid` and `scrub` (the identifying header values) are for this process only.
    """

    png: bytes
    width: int
    height: int
    columns: dict
    sop_instance_uid: str = ""
    scrub: frozenset[str] = field(default_factory=frozenset)

    def scrubbed(self, text: str) -> str:
        return scrub_text(text, self.scrub)


def is_dicom(data: bytes, name: str = "") -> bool:
    """A DICOM file: the DICM preamble at offset 128, or a .dcm / .dicom name."""
    return data[128:132] == PREAMBLE or name.lower().endswith(SUFFIXES)


def pseudonym(kind: str, value: str, salt: bytes | None = None) -> str:
    """`kind`-<16 hex digits>: HMAC-SHA256 of `value` keyed with the salt (pseudonym_salt())."""
    digest = hmac.new(salt or pseudonym_salt(), f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()
    return f"{kind}-{digest[:16]}"


_RANDOM_SALT = secrets.token_bytes(32)


def pseudonym_salt() -> bytes:
    """The salt from MEDKFP_PSEUDONYM_SALT, else one random salt for this process."""
    value = os.environ.get(SALT_ENV, "")
    return value.encode() if value else _RANDOM_SALT


def salt_source() -> str:
    """Where the salt comes from, for the ingest summary (never the salt itself)."""
    if os.environ.get(SALT_ENV):
        return SALT_ENV
    return f"random for this run ({SALT_ENV} not set: pseudonyms differ between runs)"


def scrub_text(text: str, values: frozenset[str]) -> str:
    """`text` with every occurrence of the values (longest first, any case) replaced."""
    lowered = text.lower()
    for value in sorted(values, key=len, reverse=True):
        if value.lower() in lowered:
            start = 0
            while (at := text.lower().find(value.lower(), start)) >= 0:
                text = text[:at] + REMOVED + text[at + len(value) :]
                start = at + len(REMOVED)
            lowered = text.lower()
    return text


def read_dataset(data: bytes, name: str = "") -> pydicom.Dataset:
    """Parse DICOM bytes (with or without the preamble). Raises DicomRejected."""
    try:
        return pydicom.dcmread(io.BytesIO(data), force=data[128:132] != PREAMBLE)
    except (
        InvalidDicomError,
        EOFError,
        OSError,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        NotImplementedError,
    ) as e:
        raise DicomRejected("corrupt", f"truncated or corrupt DICOM ({_one_line(e)})") from None


def dicom_to_png(source: bytes | str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """The 8-bit grayscale PNG of a DICOM file (bytes or a path), per the module's rules.

    Raises DicomRejected (a ValueError) with the reason when the file is no usable image.
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    return convert(data, max_pixels=max_pixels).png


def convert(
    data: bytes, name: str = "", salt: bytes | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> DicomImage:
    """Convert and de-identify one DICOM file: the PNG, safe manifest columns, pseudonyms.

    Raises DicomRejected: kind corrupt, not_image, no_pixel_data, unsupported_photometric,
    multi_frame, too_many_pixels, burned_in_annotation or unsupported_transfer_syntax.
    """
    if not data:
        raise DicomRejected("empty", "empty file (0 bytes)")
    ds = read_dataset(data, name)
    before, names = _text_values(ds), _walk_names(ds)
    identity = {
        "patient": str(ds.get("PatientID", "") or "").strip(),
        "study": str(ds.get("StudyInstanceUID", "") or "").strip(),
        "sop": str(ds.get("SOPInstanceUID", "") or "").strip(),
    }
    try:
        check_image_object(ds, max_pixels)
        pixels, windowing = display_pixels(ds)
    except DicomRejected as e:
        raise DicomRejected(e.kind, e.reason, removed_values(before, deidentify(ds), names)) from None
    scrub = removed_values(before, deidentify(ds), names)
    columns = {
        "patient": pseudonym("patient", identity["patient"], salt) if identity["patient"] else "",
        "study": pseudonym("study", identity["study"], salt) if identity["study"] else "",
        **{column: _plain(ds.get(keyword, "")) for column, keyword in KEPT_ATTRIBUTES.items()},
        "windowing": windowing,
    }
    for column in KEPT_ATTRIBUTES:  # the profile keeps these; a value it changed is not kept
        if columns[column] and scrub_text(columns[column], scrub) != columns[column]:
            columns[column] = ""
    height, width = pixels.shape
    return DicomImage(_png(pixels), width, height, columns, identity["sop"], scrub)


def check_image_object(ds: pydicom.Dataset, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Reject what is not one grayscale image frame. Raises DicomRejected."""
    if len(ds) == 0:
        raise DicomRejected("corrupt", "truncated or corrupt DICOM (no data element after the file header)")
    sop = ds.get("SOPClassUID")
    what = getattr(sop, "name", "") or (str(sop) if sop else "")
    if "PixelData" not in ds:
        if {"FloatPixelData", "DoubleFloatPixelData"} & set(ds.dir()):
            raise DicomRejected("unsupported_pixels", "unsupported: floating-point pixel data")
        if what and ("SR" in what.split() or "Presentation State" in what or "Key Object" in what):
            raise DicomRejected("not_image", f"not an image: a {what} object has no pixel data")
        if "Rows" in ds:  # the Image Pixel module without its pixels: cut short, or stripped
            raise DicomRejected(
                "no_pixel_data",
                f"no pixel data: a {what or 'DICOM'} image truncated or exported without its pixels",
            )
        if not what:
            raise DicomRejected("not_image", "not a DICOM image (no SOP Class UID, no pixel data)")
        raise DicomRejected("no_pixel_data", f"no pixel data: a {what} object")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in SUPPORTED_PHOTOMETRIC or int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DicomRejected(
            "unsupported_photometric",
            f"unsupported photometric interpretation {photometric or '(none)'}: medkfp takes "
            "grayscale radiographs (MONOCHROME1 or MONOCHROME2)",
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomRejected(
            "multi_frame", f"unsupported: {frames} frames in one file (export each frame as its own image)"
        )
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows < 1 or columns < 1:
        raise DicomRejected("corrupt", f"truncated or corrupt DICOM (size {columns} x {rows})")
    if rows * columns > max_pixels:
        raise DicomRejected(
            "too_many_pixels", f"over the pixel limit ({columns} x {rows}, limit {max_pixels} pixels)"
        )
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        raise DicomRejected(
            "burned_in_annotation",
            "burned-in annotation: the pixels may show identifying text; export the image without it",
        )


def display_pixels(ds: pydicom.Dataset) -> tuple[np.ndarray, str]:
    """Displayed values in 0..1 (white = dense) and the VOI used: voi_lut, window or minmax.

    Raises DicomRejected when the pixel data cannot be decoded.
    """
    try:
        stored = ds.pixel_array
    except (RuntimeError, NotImplementedError) as e:
        syntax = (
            getattr(ds.file_meta.get("TransferSyntaxUID"), "name", "unknown")
            if "file_meta" in dir(ds)
            else "unknown"
        )
        raise DicomRejected(
            "unsupported_transfer_syntax", f"cannot decode transfer syntax {syntax} ({_one_line(e)})"
        ) from None
    except (ValueError, TypeError, KeyError, AttributeError, EOFError, OSError, IndexError) as e:
        raise DicomRejected("corrupt", f"truncated or corrupt pixel data ({_one_line(e)})") from None
    if stored.ndim != 2:
        raise DicomRejected("corrupt", f"truncated or corrupt pixel data (shape {stored.shape})")
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    shown, windowing = _voi(values, ds, stored)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        shown = 1.0 - shown
    return shown, windowing


def _voi(values: np.ndarray, ds: pydicom.Dataset, stored: np.ndarray) -> tuple[np.ndarray, str]:
    lut = ds.get("VOILUTSequence")
    if lut:
        try:
            table = np.asarray(lut[0].LUTData, dtype=np.float64)
            top = float(table.max())
            if top > 0:
                # A LUT is indexed by integer values (the Modality LUT's output is integral here).
                indices = np.rint(values).astype(np.int64)
                return np.clip(apply_voi_lut(indices, ds, prefer_lut=True) / top, 0, 1), "voi_lut"
        except (ValueError, TypeError, AttributeError, IndexError, KeyError):
            pass  # an unusable LUT: the window, else the fallback
    if "WindowCenter" in ds and "WindowWidth" in ds:
        try:
            windowed = apply_voi_lut(values, ds, prefer_lut=False)
            # The window's output range, from pydicom itself: the images of -inf and +inf.
            low, high = apply_voi_lut(np.array([-np.inf, np.inf]), ds, prefer_lut=False)
            if np.isfinite([low, high]).all() and high > low:
                return np.clip((windowed - low) / (high - low), 0, 1), "window"
        except (ValueError, TypeError, IndexError, KeyError):
            pass  # e.g. a width below 1: fall back
    padding = ds.get("PixelPaddingValue")
    inside = values if padding is None else values[stored != padding]
    if inside.size == 0:
        inside = values
    low, high = float(inside.min()), float(inside.max())
    if high <= low:
        return np.zeros_like(values), "minmax"
    return np.clip((values - low) / (high - low), 0, 1), "minmax"


def _png(shown: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.rint(shown * 255).astype(np.uint8), mode="L").save(out, "PNG", compress_level=1)
    return out.getvalue()


# --- de-identification ----------------------------------------------------------------------

# dicom-anonymizer keeps one module-level map of replaced UIDs: one file at a time, map cleared.
_PROFILE_LOCK = threading.Lock()
_ACTIONS: dict | None = None


def deidentify(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Apply the Basic Profile to `ds` in place (private tags removed); returns it."""
    from dicomanonymizer import simpledicomanonymizer as profile

    global _ACTIONS
    with _PROFILE_LOCK:
        if _ACTIONS is None:
            _ACTIONS = profile.initialize_actions(PROFILE)
        profile.anonymize_dataset(ds, delete_private_tags=True, base_rules_gen=lambda: dict(_ACTIONS))
        profile.dictionary.clear()
    return ds


def removed_values(before: set[str], deidentified: pydicom.Dataset, names: list) -> frozenset[str]:
    """The text values the Basic Profile removed or replaced (present `before`, gone after it),
    and each part of each person name: what to scrub from file names and reasons, which the
    manifest and the rejects keep."""
    removed = {v for v in before - _text_values(deidentified) if len(v) >= MIN_SCRUB_LENGTH}
    for name in names:
        for part in str(name).replace("^", " ").replace("=", " ").split():
            if len(part) >= MIN_SCRUB_LENGTH - 1:
                removed.add(part)
    return frozenset(removed)


def _text_values(ds: pydicom.Dataset) -> set[str]:
    values: set[str] = set()

    def visit(dataset, element):
        if element.VR in TEXT_VRS and element.value not in (None, ""):
            items = (
                element.value
                if isinstance(element.value, (list, pydicom.multival.MultiValue))
                else [element.value]
            )
            values.update(str(v).strip() for v in items if str(v).strip())

    ds.walk(visit)
    return values


def _walk_names(ds: pydicom.Dataset) -> list:
    names = []
    ds.walk(
        lambda dataset, element: names.append(element.value) if element.VR == "PN" and element.value else None
    )
    return names


def _plain(value) -> str:
    return str(value).strip() if value is not None else ""


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def load_image_file(path: str | os.PathLike) -> bytes:
    """The bytes to send a served model for an image file: a DICOM file becomes its PNG.

    Raises OSError when the file cannot be read, DicomRejected (a ValueError) naming the file
    when a DICOM file is no usable image.
    """
    data = Path(path).read_bytes()
    if not is_dicom(data, str(path)):
        return data
    try:
        return convert(data, str(path)).png
    except DicomRejected as e:
        raise DicomRejected(e.kind, f"{scrub_text(str(path), e.scrub)}: {e.reason}", e.scrub) from None


def windowing_statement(summary: dict | None) -> str | None:
    """The model card's windowing line from an ingest summary's dicom block (None: no DICOM)."""
    if not summary or not summary.get("images"):
        return None
    used = ", ".join(f"{k} {v}" for k, v in sorted(summary.get("windowing", {}).items()))
    return (
        f"{summary['images']} DICOM image(s) converted by medkfp.dicom: {WINDOWING} (VOI used: {used}). "
        "Send DICOM files through `medkfp predict` or medkfp.dicom.dicom_to_png to get the same pixels."
    )
