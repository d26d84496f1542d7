"""Synthetic hospital DICOM exports: CR/DX films of fake patients, as a PACS writes them."""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medkfp.synth.common import (
    DICOM_BROKEN_TAG,
    DICOM_FILM_TAG,
    DICOM_LABELS_TAG,
    DICOM_PATIENTS_TAG,
    MIN_SIZE,
    progress_bar,
)
from medkfp.synth.covid import covid_image
from medkfp.synth.drawing import Grid
from medkfp.vocab import COVID_CLASSES

# pydicom is imported by the functions that use it: the other synthetic sets, and `medkfp synth`
# for them, do not pay for it.
if TYPE_CHECKING:
    import pydicom

# openjpeg logs every tile it encodes at INFO.
logging.getLogger("openjpeg").setLevel(logging.WARNING)

CLASSES = ("Normal", "Opacity")
# The COVID-19 radiography cartoon drawn for each class.
_CARTOON = {"Normal": "Normal", "Opacity": "Lung_Opacity"}
DEFAULT_PER_CLASS = 20
DEFAULT_SIZE = 128
LABELS_FILE = "labels.csv"
J2K_MIN_SIDE = 32
FLAT_DIR = "images"
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
# Transfer syntax UIDs (as in pydicom.uid, which is not imported at module level).
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
SURNAMES = (
    "Kowalczyk",
    "Oyelaran",
    "Hartmann",
    "Sasongko",
    "Delacroix",
    "Nakamura",
    "Fitzgerald",
    "Wibisono",
    "Haraldsen",
    "Castellanos",
)
GIVEN = ("Marguerite", "Adewale", "Ingeborg", "Rahmawati", "Thaddeus", "Keiko", "Lucinda", "Bramantyo")
INSTITUTION = "Rumah Sakit Sintetis Harapan"


@dataclass(frozen=True)
class Storage:
    """How a film's pixels are stored: modality, photometric, bits, rescale, VOI and syntax."""

    modality: str = "DX"
    photometric: str = "MONOCHROME2"
    bits_stored: int = 12
    slope: float = 1.0
    intercept: float = 0.0
    voi: str = "window"  # window | voi_lut | none
    transfer_syntax: str = EXPLICIT_VR_LITTLE_ENDIAN


# The export's storage variants, used in turn.
VARIANTS = (
    Storage("CR", "MONOCHROME2", 12),
    Storage("DX", "MONOCHROME1", 16, 0.5, -1024.0, "window", RLE_LOSSLESS),
    Storage("DX", "MONOCHROME2", 16, 1.0, 0.0, "none"),
    Storage("CR", "MONOCHROME1", 12, 1.0, 0.0, "voi_lut"),
    Storage("DX", "MONOCHROME2", 12, 1.0, -512.0, "window", JPEG2000_LOSSLESS),
)


@dataclass(frozen=True)
class Patient:
    """The identifying data planted in a header."""

    name: str
    patient_id: str
    birth_date: str
    accession: str
    study_uid: str
    institution: str = INSTITUTION
    physician: str = "Wirawan^Setiadi^^dr."

    def planted(self) -> list[str]:
        """The values that must never reach the store, manifest or logs."""
        return [
            self.name,
            self.patient_id,
            self.birth_date,
            self.accession,
            self.study_uid,
            self.institution,
            *self.name.split("^"),
        ]


def film_dataset(
    display: np.ndarray,
    patient: Patient,
    storage: Storage = Storage(),
    instance: int = 1,
    sop_uid: str | None = None,
) -> pydicom.FileDataset:
    """A CR/DX dataset whose displayed image (after rescale, VOI and MONOCHROME1) is `display`.

    `display` holds values in 0..1 (white = dense); they are spread over the stored range so
    that the header's window (or VOI LUT) shows them again, to within rounding.
    """
    import pydicom

    d = np.clip(np.asarray(display, dtype=np.float64), 0, 1)
    top = 2**storage.bits_stored - 1
    ds = _header(patient, storage, instance, sop_uid, d.shape)
    # The window covers most of the modality range, leaving a margin at both ends.
    lo_m = storage.intercept + 0.05 * top * storage.slope
    hi_m = storage.intercept + 0.95 * top * storage.slope
    shown = d if storage.photometric == "MONOCHROME2" else 1.0 - d
    if storage.voi == "window":
        center, width = (lo_m + hi_m) / 2, hi_m - lo_m
        # LINEAR windowing of PS3.3 C.11.2.1.2 maps c - 0.5 - (w - 1)/2 .. c - 0.5 + (w - 1)/2.
        modality = (center - 0.5) + (shown - 0.5) * (width - 1)
        ds.WindowCenter, ds.WindowWidth = f"{center:.1f}", f"{width:.1f}"
        ds.VOILUTFunction = "LINEAR"
    else:
        modality = lo_m + shown * (hi_m - lo_m)
    stored = np.clip(np.rint((modality - storage.intercept) / storage.slope), 0, top).astype(np.uint16)
    if storage.voi == "voi_lut":
        # A linear LUT from the stored range onto 12-bit output (slope 1, intercept 0 here).
        first, last = int(stored.min()), int(stored.max())
        entries = last - first + 1
        item = pydicom.Dataset()
        item.LUTDescriptor = [entries, first, 12]
        # LUT Data is "US or OW": written as US, as most modalities do.
        item.add_new("LUTData", "US", np.rint(np.linspace(0, 4095, entries)).astype(np.uint16).tolist())
        item.LUTExplanation = "LINEAR"
        ds.VOILUTSequence = [item]
    ds.PixelData = stored.tobytes()
    syntax = storage.transfer_syntax
    if syntax == JPEG2000_LOSSLESS and min(d.shape) < J2K_MIN_SIDE:
        syntax = RLE_LOSSLESS  # openjpeg's 6 wavelet levels need 32 px on each side
    if syntax != EXPLICIT_VR_LITTLE_ENDIAN:
        ds.compress(syntax, stored, generate_instance_uid=False)
    return ds


def _header(
    patient: Patient, storage: Storage, instance: int, sop_uid: str | None, shape
) -> pydicom.FileDataset:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, generate_uid

    sop_class = CR_STORAGE if storage.modality == "CR" else DX_STORAGE
    sop_uid = sop_uid or generate_uid(entropy_srcs=[patient.study_uid, str(instance)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = EXPLICIT_VR_LITTLE_ENDIAN
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = pydicom.FileDataset("", pydicom.Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = patient.name, patient.patient_id, patient.birth_date
    ds.PatientSex = "F" if instance % 2 else "M"
    ds.StudyInstanceUID = patient.study_uid
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[patient.study_uid, "series", str(instance)])
    ds.StudyDate = ds.ContentDate = "20250314"
    ds.StudyTime = "101500"
    ds.AccessionNumber = patient.accession
    ds.InstitutionName = patient.institution
    ds.ReferringPhysicianName = patient.physician
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, instance
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = storage.modality, "PA", "CHEST"
    ds.Rows, ds.Columns = shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, storage.photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, storage.bits_stored, storage.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = f"{storage.slope:g}", f"{storage.intercept:g}"
    ds.RescaleType = "US"
    ds.BurnedInAnnotation = "NO"
    return ds


def to_bytes(ds: pydicom.Dataset) -> bytes:
    """The dataset as a DICOM file (preamble, file meta)."""
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def structured_report(patient: Patient, instance: int = 900) -> pydicom.FileDataset:
    """A Basic Text SR about the patient: a DICOM object with no pixels."""
    import pydicom

    ds = _header(patient, Storage(), instance, None, (1, 1))
    for keyword in (
        "Rows",
        "Columns",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "RescaleSlope",
        "RescaleIntercept",
        "RescaleType",
        "BurnedInAnnotation",
        "ViewPosition",
    ):
        delattr(ds, keyword)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    ds.Modality = "SR"
    ds.ValueType, ds.CompletionFlag, ds.VerificationFlag = "CONTAINER", "COMPLETE", "UNVERIFIED"
    ds.ContentSequence = [pydicom.Dataset()]
    ds.ContentSequence[0].ValueType = "TEXT"
    ds.ContentSequence[0].TextValue = f"Findings for {patient.name}: no acute disease."
    return ds


def broken_films(patient: Patient, display: np.ndarray) -> dict[str, bytes]:
    """File name -> bytes of the broken objects an export holds, each to be rejected."""
    whole = to_bytes(film_dataset(display, patient, VARIANTS[0], instance=901))
    no_pixels = film_dataset(display, patient, VARIANTS[0], instance=902)
    del no_pixels.PixelData
    return {
        "broken-truncated.dcm": whole[: len(whole) * 3 // 5],
        "broken-no-pixel-data.dcm": to_bytes(no_pixels),
        "broken-report.dcm": to_bytes(structured_report(patient)),
    }


def make_patients(n: int, seed: int) -> list[Patient]:
    """`n` fake patients with distinct names, IDs, birth dates and accession numbers."""
    from pydicom.uid import generate_uid

    rng = np.random.default_rng([seed, DICOM_PATIENTS_TAG])
    patients = []
    for k in range(n):
        name = f"{SURNAMES[k % len(SURNAMES)]}^{GIVEN[(k // len(SURNAMES) + k) % len(GIVEN)]}"
        if k >= len(SURNAMES) * len(GIVEN):
            name += f"^{k}"
        patients.append(
            Patient(
                name=name,
                patient_id=f"MRN{int(rng.integers(100000, 999999))}{k:03d}",
                birth_date=f"19{int(rng.integers(40, 99))}{int(rng.integers(1, 13)):02d}"
                f"{int(rng.integers(1, 29)):02d}",
                accession=f"ACC{seed:02d}{k:05d}",
                study_uid=generate_uid(entropy_srcs=[str(seed), "study", str(k)]),
            )
        )
    return patients


def synth_dicom(
    out_dir,
    per_class: int | None = None,
    counts: list[int] | None = None,
    size: int = DEFAULT_SIZE,
    seed: int = 0,
    layout: str = "imagefolder",
    broken: bool = True,
    progress: bool = False,
) -> dict[str, int]:
    """Write a labelled synthetic DICOM export to `out_dir`; returns images per class.

    Each film is a COVID-19 radiography cartoon (Normal or Lung_Opacity) stored the ways real
    exports store radiographs (VARIANTS, in turn): MONOCHROME1 and MONOCHROME2, 12- and 16-bit
    stored values with a rescale slope/intercept, a window centre/width, a VOI LUT or neither,
    uncompressed, RLE Lossless or JPEG 2000 Lossless, with and without a .dcm name. Every header
    carries fake but realistic identifying data (names, patient IDs, birth dates, accession
    numbers, the institution, UIDs) that ingest must remove, and patients have several films,
    sometimes of different classes. The same seed gives the same files.

    layout "imagefolder": <out>/<Class>/<file> (files named IMnnnnn.dcm, every third with no
    extension); "flat": <out>/images/<file> and <out>/labels.csv (SOPInstanceUID,label).
    Patients have 1 to 4 films. With `broken`, the broken objects of broken_films() are added
    (in the first class folder, or listed in labels.csv). Raises ValueError for bad counts.
    """
    if layout not in ("imagefolder", "flat"):
        raise ValueError(f"unknown layout {layout!r}: use imagefolder or flat")
    if counts is not None and len(counts) != len(CLASSES):
        raise ValueError(f"--counts needs {len(CLASSES)} numbers ({', '.join(CLASSES)})")
    if size < MIN_SIZE:
        raise ValueError(f"--size must be at least {MIN_SIZE} pixels, got {size}")
    counts = list(counts or [per_class or DEFAULT_PER_CLASS] * len(CLASSES))
    if min(counts) < 1:
        raise ValueError("every class needs at least one image")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, DICOM_LABELS_TAG])
    labels = rng.permutation([c for c, n in zip(CLASSES, counts) for _ in range(n)])
    sizes, total = [], len(labels)
    while sum(sizes) < total:
        sizes.append(min(int(rng.integers(1, 5)), total - sum(sizes)))
    patients = make_patients(len(sizes), seed)
    grid = Grid(size)
    rows = []
    image = 0
    with progress_bar(progress, "writing DICOM films", total) as advance:
        for patient, films in zip(patients, sizes):
            for _ in range(films):
                label = str(labels[image])
                film_rng = np.random.default_rng([seed, DICOM_FILM_TAG, image])
                cartoon, _ = covid_image(film_rng, COVID_CLASSES.index(_CARTOON[label]), grid)
                storage = VARIANTS[image % len(VARIANTS)]
                ds = film_dataset(cartoon / 255.0, patient, storage, instance=image + 1)
                name = f"IM{image:05d}" + ("" if image % 3 == 2 else ".dcm")
                rows.append(_write(out, layout, label, name, to_bytes(ds), ds.SOPInstanceUID))
                image += 1
                advance()
    if broken:
        cartoon, _ = covid_image(np.random.default_rng([seed, DICOM_BROKEN_TAG]), 2, grid)
        for name, data in broken_films(patients[0], cartoon / 255.0).items():
            rows.append(_write(out, layout, CLASSES[0], name, data, ""))
    if layout == "flat":
        with open(out / LABELS_FILE, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["SOPInstanceUID", "path", "label"])
            writer.writerows(rows)
    return {c: int(n) for c, n in zip(CLASSES, counts)}


def _write(out: Path, layout: str, label: str, name: str, data: bytes, sop_uid: str) -> list[str]:
    folder = out / (label if layout == "imagefolder" else FLAT_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    # A labels row by UID; the broken files have no readable UID, so they are listed by path.
    return [sop_uid, "" if sop_uid else f"{FLAT_DIR}/{name}", label]
