"""Dataset layouts: which files of a source are candidate images, with which label and group.

Each layout accounts for every file it finds: a candidate image (path, label, group), a
file ignored with a reason (masks, spreadsheets, READMEs, hidden files), or a file rejected
before decoding with a reason (no label). Layouts see only '/'-separated paths relative to
the source, so a folder, an archive and an s3:// prefix scan the same way, and they find
the dataset's own folder inside a wrapper folder (a .zip of the download has one).
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from medkfp import vocab
from medkfp.components.ingest.sources import Entry, Source, SourceError, UnreadableFile, open_source
from medkfp.errors import UserError


class LayoutError(UserError, ValueError):
    """The source does not have the layout the dataset needs; the message says what to fix."""


@dataclass
class Item:
    """A candidate image: its path in the source, label, leakage group and extra columns."""

    path: str
    label: str
    group: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Scan:
    """Every file of a source, sorted into candidates, ignored files and early rejects."""

    root: str  # where the dataset starts inside the source ("" = the source itself)
    class_names: list[str]
    files: list[Item] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    unlabelled: list[tuple[str, str]] = field(default_factory=list)  # rejected (path, reason)
    notes: list[str] = field(default_factory=list)  # layout findings worth a user's look
    meta_columns: tuple[str, ...] = ()  # extra manifest columns the items carry
    # dicom: label by SOPInstanceUID, for files the labels table names by UID (their Item's
    # label is "" until the header is read). Never written anywhere: UIDs identify.
    labels_by_uid: dict[str, str] = field(default_factory=dict)


# macOS, Windows and editors leave these in folders and archives; they are never data.
SYSTEM_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}
# The index file of DICOM media (PS3.10): it lists the images beside it, it is none itself.
DICOMDIR = "DICOMDIR"
DOC_NAMES = ("README", "LICEN")
DOC_SUFFIXES = {".txt", ".md", ".pdf", ".html", ".htm", ".rtf", ".doc", ".docx", ".csv", ".xlsx", ".xls"}


def is_hidden(path: str) -> bool:
    return any(p.startswith(".") or p in SYSTEM_NAMES for p in PurePosixPath(path).parts)


def _parent_dirs(paths: list[str]) -> set[str]:
    dirs = {""}
    for path in paths:
        parts = PurePosixPath(path).parts[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return dirs


def _join(root: str, *parts: str) -> str:
    return "/".join(p for p in (root, *parts) if p)


def _folder(path: str) -> str:
    """The folder of a path, "" at the top."""
    return path.rpartition("/")[0]


def _relative(path: str, root: str) -> PurePosixPath | None:
    """`path` relative to `root`, or None when it lies outside."""
    if not root:
        return PurePosixPath(path)
    return PurePosixPath(path[len(root) + 1 :]) if path.startswith(root + "/") else None


# --- COVID-19 Radiography Database -----------------------------------------------------------


def scan_covid(source: Source, entries: list[Entry], label: str = "class") -> Scan:
    """COVID-19 Radiography Database: <root>/<Class>/images/*.png, or flat <Class>/*.png.

    <root> is the source, or the shallowest folder in it holding the four class folders
    (COVID-19_Radiography_Dataset/ in the download). masks/, the .metadata.xlsx files and
    the README are ignored.
    """
    paths = [e.path for e in entries]
    dirs = _parent_dirs(paths)
    roots = sorted(dirs, key=lambda d: (d.count("/") + bool(d), d))  # shallowest first

    def present(root: str) -> int:
        return sum(_join(root, c) in dirs for c in vocab.COVID_CLASSES)

    root = next((r for r in roots if present(r) == len(vocab.COVID_CLASSES)), None)
    if root is None:
        # Name what is missing where the user most likely meant the dataset to be.
        best = max(roots, key=lambda r: (present(r), r.endswith(vocab.COVID_ROOT)))
        missing = [c for c in vocab.COVID_CLASSES if _join(best, c) not in dirs]
        raise LayoutError(
            f"{source.uri} is not the COVID-19 Radiography Database layout: class folder(s) "
            f"{', '.join(repr(m) for m in missing)} missing; expected "
            f"{vocab.COVID_ROOT}/<Class>/images/*.png with classes {', '.join(vocab.COVID_CLASSES)}"
        )
    scan = Scan(root=root, class_names=list(vocab.COVID_CLASSES))
    for path in paths:
        rel = _relative(path, root)
        if is_hidden(path):
            scan.ignored.append((path, "hidden or system file"))
        elif rel is None:
            scan.ignored.append((path, f"outside the dataset folder {root}"))
        elif rel.parts[0] not in vocab.COVID_CLASSES or len(rel.parts) == 1:
            scan.ignored.append((path, "not inside a class folder (metadata, README)"))
        elif rel.parts[1] == "masks":
            scan.ignored.append((path, "lung mask, not for classification"))
        elif len(rel.parts) == 2 or (rel.parts[1] == "images" and len(rel.parts) == 3):
            scan.files.append(Item(path, rel.parts[0]))
        else:
            scan.ignored.append((path, f"in an unknown sub-folder {rel.parts[1]!r}"))
    return scan


# --- imagefolder ------------------------------------------------------------------------------


def scan_imagefolder(source: Source, entries: list[Entry], label: str = "class") -> Scan:
    """Any folder with one sub-folder per class (class = sub-folder name, sorted).

    A single wrapper folder around the class folders (as in a .zip of the folder) is
    looked through.
    """
    visible = [PurePosixPath(e.path).parts for e in entries if not is_hidden(e.path)]
    prefix: tuple[str, ...] = ()
    while True:
        inside = [parts[len(prefix) :] for parts in visible if parts[: len(prefix)] == prefix]
        top_dirs = {rel[0] for rel in inside if len(rel) > 1}
        if len(top_dirs) != 1 or any(len(rel) == 1 for rel in inside):
            break
        prefix += (top_dirs.pop(),)
    root = "/".join(prefix)
    if len(top_dirs) < 2:
        raise LayoutError(
            f"{source.uri} has {len(top_dirs)} class folder(s): an imagefolder source needs one "
            "sub-folder per class and at least two classes"
        )
    scan = Scan(root=root, class_names=sorted(top_dirs))
    for entry in entries:
        rel = _relative(entry.path, root)
        if is_hidden(entry.path):
            scan.ignored.append((entry.path, "hidden or system file"))
        elif rel is None:
            scan.ignored.append((entry.path, f"outside the dataset folder {root}"))
        elif len(rel.parts) == 1:
            scan.unlabelled.append((entry.path, "not inside a class folder"))
        elif rel.name.upper() == DICOMDIR:
            scan.ignored.append((entry.path, "DICOMDIR, the index of DICOM media"))
        else:
            scan.files.append(Item(entry.path, rel.parts[0]))
    return scan


# --- dicom: a flat export with a labels table ---------------------------------------------------

PATH_COLUMNS = ("path", "file", "filename", "file_name")
UID_COLUMNS = ("sopinstanceuid", "sop_instance_uid")
LABEL_COLUMNS = ("label", "class")


def scan_dicom(source: Source, entries: list[Entry], label: str = "class", labels: str = "") -> Scan:
    """A DICOM export in any folders, labelled by a table: path or SOPInstanceUID, and label.

    `labels` is the table: an s3:// URI, a local file, or a path inside the source (default
    labels.csv at its top). Paths in it are relative to the source (or to the table's folder).
    Files the table names by path get their label now; the rest wait for their header's
    SOPInstanceUID (Scan.labels_by_uid). Raises LayoutError for a missing or unusable table.
    """
    table_path, text = _read_labels_table(source, entries, labels)
    import pandas as pd

    try:
        table = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise LayoutError(f"cannot read the labels table {labels or table_path}: {e}") from None
    columns = {c.strip().lower(): c for c in table.columns}
    path_col = next((columns[c] for c in PATH_COLUMNS if c in columns), None)
    uid_col = next((columns[c] for c in UID_COLUMNS if c in columns), None)
    label_col = next((columns[c] for c in LABEL_COLUMNS if c in columns), None)
    if label_col is None or (path_col is None and uid_col is None):
        raise LayoutError(
            f"the labels table {labels or table_path} has columns {', '.join(table.columns) or '(none)'}: "
            "it needs a path (or SOPInstanceUID) column and a label column"
        )
    paths = {e.path for e in entries}
    base = _folder(table_path) if table_path else ""
    by_path: dict[str, str] = {}
    by_uid: dict[str, str] = {}
    missing = unlabelled_rows = 0
    for row in table.to_dict("records"):
        value = str(row.get(label_col, "")).strip()
        path = _clean_path(row.get(path_col, "")) if path_col else ""
        uid = str(row.get(uid_col, "")).strip() if uid_col else ""
        if not value:
            unlabelled_rows += 1
        elif path:
            found = next((p for p in (path, _join(base, path)) if p in paths), None)
            if found is None:
                missing += 1
            else:
                by_path.setdefault(found, value)
        elif uid:
            by_uid.setdefault(uid, value)
    class_names = sorted(set(by_path.values()) | set(by_uid.values()))
    if len(class_names) < 2:
        raise LayoutError(
            f"the labels table {labels or table_path} names {len(class_names)} class(es) for files of "
            f"{source.uri}: a dicom source needs at least two classes"
        )
    scan = Scan(root="", class_names=class_names, labels_by_uid=by_uid)
    if missing:
        scan.notes.append(f"the labels table lists {missing} path(s) with no file in the source")
    if unlabelled_rows:
        scan.notes.append(f"the labels table has {unlabelled_rows} row(s) with no label")
    for entry in entries:
        name = PurePosixPath(entry.path).name
        if entry.path == table_path:
            scan.ignored.append((entry.path, "the labels table"))
        elif is_hidden(entry.path):
            scan.ignored.append((entry.path, "hidden or system file"))
        elif name.upper() == DICOMDIR:
            scan.ignored.append((entry.path, "DICOMDIR, the index of DICOM media"))
        elif entry.path in by_path:
            scan.files.append(Item(entry.path, by_path[entry.path]))
        elif PurePosixPath(name).suffix.lower() in DOC_SUFFIXES or name.upper().startswith(DOC_NAMES):
            scan.ignored.append((entry.path, "documentation"))
        elif by_uid:
            scan.files.append(Item(entry.path, ""))  # labelled once its SOPInstanceUID is read
        else:
            scan.unlabelled.append((entry.path, "no row in the labels table for this file"))
    return scan


def _read_labels_table(source: Source, entries: list[Entry], labels: str) -> tuple[str, str]:
    """(path of the table inside the source or "", its text). Raises LayoutError."""
    if labels.startswith("s3://"):
        from medkfp.store import StoreError, open_uri

        try:
            store, key = open_uri(labels)
            return "", store.get_text(key)
        except StoreError as e:
            raise LayoutError(f"cannot read the labels table {labels}: {e}") from None
    if labels and Path(labels).is_file():
        return "", Path(labels).read_text(encoding="utf-8-sig")
    inside = _clean_path(labels or vocab.DICOM_LABELS_FILE)
    if inside not in {e.path for e in entries}:
        raise LayoutError(
            f"no labels table {labels or vocab.DICOM_LABELS_FILE} for {source.uri}: give --labels FILE.csv "
            "(a path or SOPInstanceUID column and a label column), or put labels.csv at the top of the export"
        )
    return inside, _read_text(source, inside).lstrip("\ufeff")


def _clean_path(value) -> str:
    """A table's path as a source path: '/'-separated, no './' or leading '/'."""
    parts = [p for p in PurePosixPath(str(value).strip().replace("\\", "/")).parts if p not in ("/", ".")]
    return "/".join(parts)


# --- mini-MIAS ----------------------------------------------------------------------------------

REF = re.compile(r"mdb\d{3}", re.IGNORECASE)
FILM = re.compile(r"(mdb\d{3})\.[a-z0-9]+", re.IGNORECASE)


@dataclass(frozen=True)
class InfoRow:
    """One abnormality row of Info.txt (NORM films have one row without severity)."""

    line: int
    ref: str
    tissue: str
    abnormality: str
    severity: str | None = None  # "B" / "M"
    x: int | None = None  # origin bottom-left, 1024 x 1024 frame
    y: int | None = None
    radius: int | None = None


def parse_info(text: str) -> tuple[list[InfoRow], list[str]]:
    """Parse Info.txt: returns its abnormality rows and a problem note per unusable line.

    Takes every row shape of the real file: the header line, blank lines, NORM rows that end
    after the class (often with trailing blanks), several rows for one film, and CALC rows
    with a severity but no centre or radius. Any whitespace separates fields; CRLF is fine.
    """
    rows, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens or tokens[0].upper() == "REFNUM":
            continue
        row, problem = _parse_row(number, tokens)
        if problem:
            problems.append(f"Info.txt line {number} {line.strip()!r}: {problem}")
        if row:
            rows.append(row)
    return rows, problems


def _parse_row(number: int, tokens: list[str]) -> tuple[InfoRow | None, str | None]:
    if not REF.fullmatch(tokens[0]):
        return None, "not a film row (starts with mdbNNN)"
    if len(tokens) < 3:
        return None, "needs at least reference, background tissue and class"
    ref, tissue, abnormality = tokens[0].lower(), tokens[1].upper(), tokens[2].upper()
    if tissue not in vocab.MIAS_TISSUES:
        return None, f"unknown background tissue {tokens[1]!r} (F, G or D)"
    if abnormality not in vocab.MIAS_CLASSES:
        return None, f"unknown class {tokens[2]!r} ({', '.join(vocab.MIAS_CLASSES)})"
    if abnormality == vocab.MIAS_NORMAL:
        return InfoRow(number, ref, tissue, abnormality), None
    severity = tokens[3].upper() if len(tokens) > 3 else None
    if severity not in vocab.MIAS_SEVERITY:
        return InfoRow(number, ref, tissue, abnormality), "no severity (B or M)"
    numbers = tokens[4:7]
    if len(numbers) == 3 and all(t.lstrip("-").isdigit() for t in numbers):
        x, y, radius = (int(t) for t in numbers)
        return InfoRow(number, ref, tissue, abnormality, severity, x, y, radius), None
    # Widely distributed calcifications have no centre; other text there is kept as absent.
    problem = f"centre and radius {' '.join(tokens[4:])!r} are not numbers" if len(tokens) > 4 else None
    return InfoRow(number, ref, tissue, abnormality, severity), problem


def film_labels(rows: list[InfoRow]) -> dict:
    """One film's manifest columns from its rows: class, tissue, severity, lesion count.

    The class is the first row's (the rows of one film share it in the real file); the
    severity is the worst of the rows: malignant over benign; normal for a NORM film.
    """
    first = rows[0]
    severities = {r.severity for r in rows}
    if first.abnormality == vocab.MIAS_NORMAL:
        severity = "normal"
    elif "M" in severities:
        severity = vocab.MIAS_SEVERITY["M"]
    elif "B" in severities:
        severity = vocab.MIAS_SEVERITY["B"]
    else:
        severity = ""
    return {
        "abnormality": first.abnormality,
        "tissue": first.tissue,
        "severity": severity,
        "lesions": sum(r.x is not None for r in rows),
    }


def mias_pair(ref: str) -> str:
    """Leakage group of a film: its left/right pair (mdb001+mdb002 is pair 1)."""
    number = int(ref[3:])
    return f"mias-pair-{(number + 1) // 2:03d}"


def scan_mias(source: Source, entries: list[Entry], label: str = "class") -> Scan:
    """mini-MIAS: mdbNNN.pgm films and Info.txt, in all-mias/ (Info.txt may sit beside it).

    Label = the abnormality class (7 classes) or, with label="severity", normal / benign /
    malignant. Films with no usable Info.txt row are rejected with the reason.
    """
    paths = [e.path for e in entries]
    infos = sorted(
        (
            p
            for p in paths
            if PurePosixPath(p).name.lower() == vocab.MIAS_INFO_FILE.lower() and not is_hidden(p)
        ),
        key=lambda p: (p.count("/"), p),
    )
    films_per_dir: dict[str, int] = {}
    for p in paths:
        if FILM.fullmatch(PurePosixPath(p).name) and not is_hidden(p):
            folder = _folder(p)
            films_per_dir[folder] = films_per_dir.get(folder, 0) + 1
    if not infos or not films_per_dir:
        what = "no Info.txt" if not infos else "no mdbNNN.pgm film"
        raise LayoutError(
            f"{source.uri} is not the mini-MIAS layout: {what} found; expected "
            f"{vocab.MIAS_DIR}/mdbNNN.pgm and {vocab.MIAS_DIR}/{vocab.MIAS_INFO_FILE}"
        )
    folder = max(films_per_dir, key=lambda d: (films_per_dir[d], -d.count("/")))
    # Info.txt in the film folder wins; else the shallowest (it may sit beside all-mias/).
    info_path = min(infos, key=lambda p: (_folder(p) != folder, p.count("/"), p))
    rows, problems = parse_info(_read_text(source, info_path))
    by_ref: dict[str, list[InfoRow]] = {}
    for row in rows:
        by_ref.setdefault(row.ref, []).append(row)

    class_names = list(vocab.SEVERITY_CLASSES if label == "severity" else vocab.MIAS_CLASSES)
    scan = Scan(
        root=folder,
        class_names=class_names,
        notes=problems,
        meta_columns=("abnormality", "tissue", "severity", "lesions"),
    )
    seen_refs = set()
    for path in paths:
        _sort_mias_file(scan, path, folder, info_path, by_ref, label, seen_refs)
    _note_disagreements(scan, by_ref)
    missing = sorted(set(by_ref) - seen_refs)
    if missing and len(missing) == len(by_ref):
        raise LayoutError(
            f"{info_path} in {source.uri} has no row for any film in {folder or 'the source'}: "
            "give the Info.txt of these films"
        )
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        scan.notes.append(f"Info.txt lists {len(missing)} film(s) with no file: {shown}")
    return scan


def _sort_mias_file(scan, path, folder, info_path, by_ref, label, seen_refs) -> None:
    name = PurePosixPath(path).name
    match = FILM.fullmatch(name)
    if path == info_path:
        scan.ignored.append((path, "the labels file (Info.txt)"))
    elif is_hidden(path):
        scan.ignored.append((path, "hidden or system file"))
    elif _folder(path) != folder:
        scan.ignored.append((path, f"outside the film folder {folder or '.'}"))
    elif match is None and (
        PurePosixPath(name).suffix.lower() in DOC_SUFFIXES or name.upper().startswith(("README", "LICEN"))
    ):
        scan.ignored.append((path, "documentation"))
    elif match is None:
        scan.unlabelled.append((path, "not a MIAS film name (mdbNNN.pgm)"))
    elif match.group(1).lower() not in by_ref:
        scan.unlabelled.append((path, f"no usable Info.txt row for {match.group(1).lower()}"))
    else:
        ref = match.group(1).lower()
        seen_refs.add(ref)
        meta = film_labels(by_ref[ref])
        item_label = meta["severity"] if label == "severity" else meta["abnormality"]
        if not item_label:
            scan.unlabelled.append((path, f"no severity for {ref} in Info.txt"))
        else:
            scan.files.append(Item(path, item_label, mias_pair(ref), meta))


def _note_disagreements(scan: Scan, by_ref: dict[str, list[InfoRow]]) -> None:
    for ref, rows in sorted(by_ref.items()):
        classes = sorted({r.abnormality for r in rows})
        if len(classes) > 1:
            scan.notes.append(
                f"{ref} has rows of classes {', '.join(classes)}: labelled "
                f"{rows[0].abnormality} (its first row)"
            )


def _read_text(source: Source, path: str) -> str:
    try:
        data = source.read(path)
    except UnreadableFile as e:
        raise LayoutError(f"cannot read {path} in {source.uri}: {e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # older copies of the file are not UTF-8


# --- dispatch ------------------------------------------------------------------------------------

LAYOUTS = {
    vocab.COVID: scan_covid,
    vocab.MIAS: scan_mias,
    vocab.IMAGEFOLDER: scan_imagefolder,
    vocab.DICOM: scan_dicom,
}


def scan_layout(dataset: str, source: Source, label: str = "class", labels: str = "") -> Scan:
    """Scan an open source with the layout of `dataset` (`labels`: dicom's labels table).

    Raises LayoutError."""
    if dataset not in LAYOUTS:
        raise LayoutError(f"unknown dataset {dataset!r}: use one of {', '.join(LAYOUTS)}")
    if label not in vocab.LABELS:
        raise LayoutError(f"unknown label {label!r}: use one of {', '.join(vocab.LABELS)}")
    if label == "severity" and dataset != vocab.MIAS:
        raise LayoutError(f"--label severity needs --dataset {vocab.MIAS}: {dataset} has no severity")
    entries = source.entries()
    if not entries:
        raise LayoutError(
            f"source {source.uri} holds no files: give the folder, archive or prefix of the download"
        )
    if labels and dataset != vocab.DICOM:
        raise LayoutError(
            f"--labels needs --dataset {vocab.DICOM}: {dataset} takes its labels from its layout"
        )
    if dataset == vocab.DICOM:
        return scan_dicom(source, entries, label, labels)
    return LAYOUTS[dataset](source, entries, label)


@contextlib.contextmanager
def opened_source(source: str | Path) -> Iterator[Source]:
    """open_source, with a missing or unopenable source reported as a LayoutError."""
    try:
        opened = open_source(source)
    except SourceError as e:
        raise LayoutError(str(e)) from None
    with opened:
        yield opened


def scan_source(dataset: str, source: str | Path, label: str = "class", labels: str = "") -> Scan:
    """Open `source` (folder, archive or s3:// prefix) and scan it with the layout of `dataset`.

    Used for fail-fast checks before a run. Raises LayoutError for a wrong layout or a
    missing or unopenable source, StoreError for an S3 endpoint that cannot be used.
    """
    with opened_source(source) as opened:
        return scan_layout(dataset, opened, label, labels)
