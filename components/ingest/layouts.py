"""Dataset layouts: which files of a source are candidate images, with which label.

Each layout returns every file it finds, either as a candidate image (path, label) or as
ignored with a reason (masks, spreadsheets, READMEs): nothing found goes unaccounted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medkfp import vocab


class LayoutError(ValueError):
    """The source does not have the layout the dataset needs; the message says what to fix."""


@dataclass
class Scan:
    root: Path
    class_names: list[str]
    files: list[tuple[Path, str]] = field(default_factory=list)  # (path, label)
    ignored: list[tuple[Path, str]] = field(default_factory=list)  # (path, reason)
    unlabelled: list[tuple[Path, str]] = field(default_factory=list)  # rejected (path, reason)


def _all_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def scan_covid(source: Path) -> Scan:
    """COVID-19 Radiography Database: <root>/<Class>/images/*.png, or flat <Class>/*.png."""
    root = source / vocab.COVID_ROOT if (source / vocab.COVID_ROOT).is_dir() else source
    missing = [c for c in vocab.COVID_CLASSES if not (root / c).is_dir()]
    if missing:
        raise LayoutError(
            f"{source} is not the COVID-19 Radiography Database layout: class folder(s) "
            f"{', '.join(repr(m) for m in missing)} missing; expected "
            f"{vocab.COVID_ROOT}/<Class>/images/*.png with classes {', '.join(vocab.COVID_CLASSES)}"
        )
    scan = Scan(root=root, class_names=list(vocab.COVID_CLASSES))
    class_dirs = {root / c for c in vocab.COVID_CLASSES}
    for path in _all_files(root):
        rel = path.relative_to(root)
        top = root / rel.parts[0]
        if top not in class_dirs or len(rel.parts) == 1:
            scan.ignored.append((path, "not inside a class folder (metadata, README)"))
        elif rel.parts[1] == "masks":
            scan.ignored.append((path, "lung mask, not for classification"))
        elif rel.parts[1] == "images" or len(rel.parts) == 2:
            scan.files.append((path, rel.parts[0]))
        else:
            scan.ignored.append((path, f"in an unknown sub-folder {rel.parts[1]!r}"))
    return scan


def scan_imagefolder(source: Path) -> Scan:
    """Any folder with one sub-folder per class (class = sub-folder name, sorted)."""
    classes = sorted(p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise LayoutError(
            f"{source} has {len(classes)} class folder(s): an imagefolder source needs one "
            "sub-folder per class and at least two classes"
        )
    scan = Scan(root=source, class_names=classes)
    for path in _all_files(source):
        rel = path.relative_to(source)
        if len(rel.parts) == 1:
            scan.unlabelled.append((path, "not inside a class folder"))
        elif rel.parts[0].startswith("."):
            scan.ignored.append((path, "hidden folder"))
        else:
            scan.files.append((path, rel.parts[0]))
    return scan


LAYOUTS = {vocab.COVID: scan_covid, vocab.IMAGEFOLDER: scan_imagefolder}


def scan_source(dataset: str, source: str | Path) -> Scan:
    """Scan a local folder with the layout of `dataset`. Raises LayoutError."""
    if dataset not in LAYOUTS:
        raise LayoutError(
            f"unknown or not yet supported dataset {dataset!r}: use one of {', '.join(LAYOUTS)}"
        )
    source = Path(source)
    if not source.is_dir():
        raise LayoutError(f"source {source} is not a folder: give the folder of the download")
    return LAYOUTS[dataset](source)
