"""Ingest: scan a source, decode-check every file, write the manifest and upload the images.

Nothing found is lost: every file is accepted, rejected with a reason, or ignored with a
reason (masks, metadata), and found = accepted + rejected. Files with identical content
are reported and share a leakage group with each other (and MIAS films with their pair,
DICOM films with their patient's other films), so the split keeps them in one split.

DICOM files (a .dcm name or the DICM preamble) are converted and de-identified by
medkfp.dicom before anything is uploaded: the store gets the windowed 8-bit PNG, the
manifest the patient and study pseudonyms and a few technical attributes, and file names
lose any value the de-identification removed from their header.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from medkfp import dicom, snapshot, vocab
from medkfp.components.ingest.layouts import Item, opened_source, scan_layout
from medkfp.components.ingest.sources import UnreadableFile
from medkfp.errors import InvalidInputError
from medkfp.image_files import DEFAULT_MAX_PIXELS, Rejection, check_image
from medkfp.packs import PACKS_IN_FLIGHT, PackWriter
from medkfp.parallel import DEFAULT_WORKERS, Uploader, bounded_map, progress_bar
from medkfp.store import open_store

MANIFEST_COLUMNS = [
    "id",
    "path",
    "label",
    "group",
    "suffix",
    "sha256",
    "bytes",
    "width",
    "height",
    "mode",
    "format",
    "pack",  # the image's pack (medkfp.packs) and the offset of its bytes there
    "offset",
]
REJECT_COLUMNS = ["path", "reason", "kind"]
DEFAULT_MAX_REJECTED_FRACTION = vocab.DEFAULT_MAX_REJECTED_FRACTION


@dataclass
class Survey:
    """What a source holds, file by file: the result of scanning and checking it."""

    dataset: str
    source: str
    label: str
    class_names: list[str]
    accepted: list[dict] = field(default_factory=list)  # manifest rows
    rejects: list[dict] = field(default_factory=list)  # {path, reason, kind}
    ignored: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    meta_columns: tuple[str, ...] = ()

    labels_by_uid: dict[str, str] = field(default_factory=dict, repr=False)  # never stored

    @property
    def found(self) -> int:
        return len(self.accepted) + len(self.rejects)

    @property
    def rejected_fraction(self) -> float:
        return len(self.rejects) / self.found if self.found else 0.0

    def class_counts(self) -> dict[str, int]:
        counts = Counter(r["label"] for r in self.accepted)
        return {c: int(counts[c]) for c in self.class_names}

    def dicom_summary(self) -> dict | None:
        """How the DICOM files were converted and de-identified (None when there were none)."""
        converted = [r for r in self.accepted if r.get("format") == dicom.FORMAT]
        rejected = [r for r in self.rejects if r.get("dicom")]
        if not converted and not rejected:
            return None
        per_patient = Counter(r["patient"] for r in converted if r.get("patient"))
        return {
            "images": len(converted),
            "rejected": len(rejected),
            "patients": len(per_patient),
            "images_per_patient": {str(k): v for k, v in sorted(Counter(per_patient.values()).items())},
            "grouped_by_study_only": sum(1 for r in converted if not r.get("patient") and r.get("study")),
            "ungrouped": sum(1 for r in converted if not r.get("patient") and not r.get("study")),
            "windowing": dict(Counter(r["windowing"] for r in converted)),
            "photometric": dict(Counter(r["photometric"] for r in converted)),
            "conversion": dicom.WINDOWING,
            "deidentification": dicom.PROFILE_NAME,
            "pseudonym_salt": dicom.salt_source(),
        }

    def duplicates(self) -> list[dict]:
        """Sets of accepted files with identical content: {sha256, paths, labels}."""
        by_hash: dict[str, list[dict]] = {}
        for record in self.accepted:
            by_hash.setdefault(record["sha256"], []).append(record)
        return [
            {"sha256": h, "paths": [r["path"] for r in rs], "labels": sorted({r["label"] for r in rs})}
            for h, rs in sorted(by_hash.items())
            if len(rs) > 1
        ]


def image_id(relative_path: str) -> str:
    """Stable id of a source file: a hash of its path inside the source."""
    return hashlib.sha256(relative_path.encode()).hexdigest()[:16]


def survey_source(
    dataset: str,
    source: str,
    label: str = "class",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    keep=None,
    workers: int = DEFAULT_WORKERS,
    progress: bool = False,
    labels: str = "",
) -> Survey:
    """Scan `source` with the dataset's layout and decode-check every candidate file.

    Args:
        dataset, source, label, labels: as for ingest.
        max_pixels: images over this many pixels are rejected (decompression-bomb guard).
        keep: called as keep(record, data) for each accepted file with the bytes to store
            (a DICOM file's PNG), in this thread and in the source's order (ingest packs
            them there, so each file is read once and the packs do not depend on timing).
        workers: reader/checker threads.
        progress: draw a progress bar on stderr.

    Returns the Survey, accepted rows and rejects sorted by path, groups assigned.
    Raises LayoutError (a ValueError) or StoreError.
    """
    with opened_source(source) as opened:
        scan = scan_layout(dataset, opened, label, labels)
        survey = Survey(
            dataset,
            str(source),
            label,
            scan.class_names,
            ignored=scan.ignored,
            notes=list(scan.notes),
            meta_columns=scan.meta_columns,
            labels_by_uid=scan.labels_by_uid,
        )
        survey.rejects += [_reject(p, r, "unlabelled") for p, r in scan.unlabelled]
        survey.rejects += [_reject(p, r, "unreadable") for p, r in opened.unlisted]
        items = {item.path: item for item in scan.files}

        def inspect(pair):
            path, loader = pair
            record, rejection, path, data = _inspect(items[path], loader, max_pixels, scan.labels_by_uid)
            return record, rejection, path, data if keep else None  # bytes leave the thread only if kept

        with progress_bar(progress, f"checking {len(items)} files", len(items)) as advance:
            for record, rejection, path, data in bounded_map(inspect, opened.loaders(list(items)), workers):
                if rejection:
                    survey.rejects.append(_reject(path, rejection.reason, rejection.kind))
                    if isinstance(rejection, DicomRejection):
                        survey.rejects[-1]["dicom"] = True
                else:
                    if keep is not None:
                        keep(record, data)
                    survey.accepted.append(record)
                advance()
    survey.accepted.sort(key=lambda r: (r["path"], r["id"]))
    survey.rejects.sort(key=lambda r: r["path"])
    if any(r.get("format") == dicom.FORMAT for r in survey.accepted):
        survey.meta_columns += tuple(c for c in dicom.COLUMNS if c not in survey.meta_columns)
    assign_groups(survey.accepted)
    return survey


@dataclass(frozen=True)
class DicomRejection(Rejection):
    """The rejection of a DICOM file (counted in the ingest summary's dicom block)."""


def _inspect(
    item: Item, loader, max_pixels: int, labels_by_uid=None
) -> tuple[dict | None, Rejection | None, str, bytes | None]:
    """Read and check one file; returns (manifest row, None, path, bytes to store) or
    (None, why, path, None)."""
    try:
        data = loader()
    except UnreadableFile as e:
        reason = str(e) if e.kind != "unreadable" else f"unreadable ({e})"
        return None, Rejection(e.kind, reason), item.path, None
    if dicom.is_dicom(data, item.path):
        return _inspect_dicom(item, data, max_pixels, labels_by_uid or {})
    if not item.label:  # the labels table names it by a SOPInstanceUID, which only DICOM has
        why = "not DICOM, so no SOPInstanceUID to find in the labels table"
        return None, Rejection("unlabelled", why), item.path, None
    info, rejection = check_image(data, max_pixels)
    if rejection:
        return None, rejection, item.path, None
    suffix = "." + item.path.rsplit(".", 1)[-1].lower() if "." in item.path.rsplit("/", 1)[-1] else ""
    record = {
        "id": image_id(item.path),
        "path": item.path,
        "label": item.label,
        "group": item.group,
        "suffix": suffix,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        **info,
        **item.meta,
    }
    return record, None, item.path, data


def _inspect_dicom(
    item: Item, data: bytes, max_pixels: int, labels_by_uid: dict
) -> tuple[dict | None, Rejection | None, str, bytes | None]:
    """Convert and de-identify one DICOM file: the PNG is what gets kept and uploaded.

    Its path and reasons lose every header value the de-identification removed; the label
    comes from the layout, else from the labels table by the header's SOPInstanceUID.
    """
    try:
        image = dicom.convert(data, item.path, max_pixels=max_pixels)
    except dicom.DicomRejected as e:
        # Only a decoder's own words can quote the header; the other reasons are medkfp's.
        reason = dicom.scrub_text(e.reason, e.scrub) if e.kind in dicom.DECODER_KINDS else e.reason
        return None, DicomRejection(e.kind, reason), dicom.scrub_text(item.path, e.scrub), None
    path = image.scrubbed(item.path)
    label = item.label or labels_by_uid.get(image.sop_instance_uid, "")
    if not label:
        why = "no row in the labels table for this file's SOPInstanceUID"
        return None, DicomRejection("unlabelled", why), path, None
    record = {
        "id": image_id(item.path),
        "path": path,
        "label": label,
        # The pseudonymous patient is the leakage group; the study when the header has no patient.
        "group": item.group or image.columns["patient"] or image.columns["study"] or None,
        "suffix": ".png",
        "sha256": hashlib.sha256(image.png).hexdigest(),
        "bytes": len(image.png),
        "width": image.width,
        "height": image.height,
        "mode": "L",
        "format": dicom.FORMAT,
        **item.meta,
        **image.columns,
    }
    return record, None, path, image.png


def _reject(path: str, reason: str, kind: str) -> dict:
    return {"path": path, "reason": reason, "kind": kind}


def assign_groups(records: list[dict]) -> None:
    """Set each record's leakage group: its layout group merged with identical-content files.

    A group is named after its layout group (e.g. mias-pair-001), else "dup-<hash>" for
    a set of identical files, else the image's own id.
    """
    parent: dict[str, str] = {}

    def find(node: str) -> str:
        while parent.setdefault(node, node) != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    counts = Counter(r["sha256"] for r in records)
    for r in records:
        if r.get("group"):
            union(r["id"], "group:" + r["group"])
        if counts[r["sha256"]] > 1:
            union(r["id"], "dup:" + r["sha256"][:16])
    members: dict[str, list[str]] = {}
    for node in list(parent):
        members.setdefault(find(node), []).append(node)
    names = {}
    for root, nodes in members.items():
        layout = sorted(n.removeprefix("group:") for n in nodes if n.startswith("group:"))
        copies = sorted(n.removeprefix("dup:") for n in nodes if n.startswith("dup:"))
        names[root] = layout[0] if layout else f"dup-{copies[0]}"
    for r in records:
        r["group"] = names[find(r["id"])] if r["id"] in parent else r["id"]


def ingest(
    dataset: str,
    source: str,
    store_uri: str,
    run_id: str,
    label: str = "class",
    max_rejected_fraction: float = DEFAULT_MAX_REJECTED_FRACTION,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = DEFAULT_WORKERS,
    progress: bool = False,
    labels: str = "",
) -> dict:
    """Scan `source`, check every file, upload accepted images, write manifest and rejects.

    Args:
        dataset: covid19-radiography, mias or imagefolder.
        source: a folder, a .zip/.tar(.gz) archive, or s3://bucket/prefix.
        store_uri, run_id: where the run's files go.
        label: "class", or "severity" (mias: normal / benign / malignant).
        max_rejected_fraction: fail when more of the files found are rejected.
        max_pixels: pixel limit per image.
        labels: dicom: the labels table (s3:// URI, local file or path in the source;
            default labels.csv at the top of the source).

    Returns the ingest summary: store, keys of the manifest, rejects and ignored CSVs,
    class names and counts (found = accepted + rejected), the number of image packs
    (medkfp.packs) the accepted images went into, every reject {path, reason},
    duplicate sets, layout notes and, when DICOM files were found, the dicom block
    (conversion, de-identification, patients).
    Raises LayoutError for a source without the dataset's layout, ValueError for too many
    rejects or a class without images, StoreError for the store.
    """
    if not 0 <= max_rejected_fraction <= 1:
        raise InvalidInputError(
            f"--max-rejected-fraction must be between 0 and 1, got {max_rejected_fraction}"
        )
    store = open_store(store_uri)
    listed_at = snapshot.now()  # lineage: when the source was listed, before reading it

    # Accepted images go into packs (medkfp.packs: a few large objects, not one per image),
    # uploaded in their own pool while the checks go on. Leaving the block waits for the
    # uploads and reports failures.
    with Uploader(store.put_bytes, window=PACKS_IN_FLIGHT) as uploads:
        packs = PackWriter(run_id, uploads.submit)

        def keep(record: dict, data: bytes) -> None:
            record["pack"], record["offset"] = packs.add(record["id"], record["suffix"], data)

        survey = survey_source(dataset, source, label, max_pixels, keep, workers, progress, labels)
        pack_count = packs.close()
    keys = {n: vocab.run_key(run_id, "ingest", f"{n}.csv") for n in ("manifest", "rejects", "ignored")}
    rejects = pd.DataFrame(survey.rejects, columns=REJECT_COLUMNS)
    store.put_text(keys["rejects"], rejects.to_csv(index=False))
    ignored = pd.DataFrame(survey.ignored, columns=["path", "reason"])
    store.put_text(keys["ignored"], ignored.to_csv(index=False))
    check_rejected_fraction(survey, max_rejected_fraction, store.uri_for(keys["rejects"]))
    check_every_class(survey)
    columns = MANIFEST_COLUMNS + list(survey.meta_columns)
    store.put_text(keys["manifest"], pd.DataFrame(survey.accepted, columns=columns).to_csv(index=False))
    lineage = snapshot.record_snapshot(store, run_id, source, survey.accepted, survey.rejects, listed_at)
    summary = {
        "dataset": dataset,
        "source": str(source),
        "label": label,
        "run_id": run_id,
        "store": store.uri,
        "class_names": survey.class_names,
        "manifest_key": keys["manifest"],
        "rejects_key": keys["rejects"],
        "ignored_key": keys["ignored"],
        "counts": counts_of(survey),
        "packs": pack_count,
        "class_counts": survey.class_counts(),
        "rejects": [_public(r) for r in survey.rejects],
        "reject_kinds": dict(Counter(r["kind"] for r in survey.rejects)),
        "ignored_reasons": dict(Counter(reason for _, reason in survey.ignored)),
        "duplicates": survey.duplicates(),
        "notes": survey.notes,
        **lineage,
    }
    if survey.dicom_summary():
        summary["dicom"] = survey.dicom_summary()
    return summary


def _public(reject: dict) -> dict:
    return {k: reject[k] for k in REJECT_COLUMNS}


def counts_of(survey: Survey) -> dict[str, int]:
    return {
        "found": survey.found,
        "accepted": len(survey.accepted),
        "rejected": len(survey.rejects),
        "ignored": len(survey.ignored),
    }


def rejected_fraction_problem(survey: Survey, limit: float, where: str = "") -> str | None:
    """The one-line message when too many files are rejected, else None."""
    if survey.rejected_fraction <= limit:
        return None
    listed = f"; the list is in {where}" if where else ""
    return (
        f"{len(survey.rejects)} of {survey.found} files in {survey.source} were rejected "
        f"({survey.rejected_fraction:.1%}), over --max-rejected-fraction {limit:g}{listed}: "
        "fix or remove the files (`medkfp plan` lists each with its reason), or raise the limit"
    )


def check_rejected_fraction(survey: Survey, limit: float, where: str = "") -> None:
    problem = rejected_fraction_problem(survey, limit, where)
    if problem:
        raise InvalidInputError(problem)


def empty_classes_problem(survey: Survey) -> str | None:
    empty = [c for c, n in survey.class_counts().items() if n == 0]
    if not empty:
        return None
    return (
        f"no usable image for class(es) {', '.join(empty)} in {survey.source}: "
        "add images or remove the empty class folder"
    )


def check_every_class(survey: Survey) -> None:
    problem = empty_classes_problem(survey)
    if problem:
        raise InvalidInputError(problem)
