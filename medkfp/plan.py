"""`medkfp plan`: the ingest-level dry run - what a run would accept, reject, split and balance.

It runs the same scan, decode checks, grouping and split code as the ingest and preprocess
steps, with the same seed, but uploads nothing and trains nothing, so its counts are the
run's counts.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

from medkfp import vocab
from medkfp.components.ingest.logic import (
    Survey,
    counts_of,
    empty_classes_problem,
    rejected_fraction_problem,
    survey_source,
)
from medkfp.image_files import DEFAULT_MAX_PIXELS
from medkfp.parallel import DEFAULT_WORKERS

RESAMPLING = ("none", "undersample", "oversample")


def plan(
    dataset: str,
    source: str,
    label: str = "class",
    test_fraction: float = 0.2,
    val_fraction: float = 0.2,
    seed: int = 0,
    max_rejected_fraction: float = vocab.DEFAULT_MAX_REJECTED_FRACTION,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int = DEFAULT_WORKERS,
    progress: bool = False,
    labels: str = "",
) -> dict:
    """Survey `source` and predict the run: counts, rejects, splits, balancing, leakage.

    Returns a JSON-ready dict with at least found, accepted, rejected, rejects [{path,
    reason, kind}], classes {class: images}, splits {train|val|test: {class: images}},
    balanced_train {none|undersample|oversample|class_weight: {class: images}}, leakage
    {groups_across_splits, duplicate_files, duplicate_sets, groups} and problems: the
    one-line messages with which a run would stop (empty when it would go on). With DICOM
    files also dicom (conversion, de-identification) and patients {patients,
    images_per_patient {films: patients}, splits {split: patients}, patients_across_splits}.
    Raises LayoutError / SourceError (ValueErrors) or StoreError when the source cannot be
    scanned at all.
    """
    survey = survey_source(dataset, source, label, max_pixels, None, workers, progress, labels)
    duplicates = survey.duplicates()
    report = {
        "dataset": dataset,
        "source": str(source),
        "label": label,
        **counts_of(survey),
        "rejected_fraction": round(survey.rejected_fraction, 6),
        "max_rejected_fraction": max_rejected_fraction,
        "rejects": [{k: r[k] for k in ("path", "reason", "kind")} for r in survey.rejects],
        "reject_kinds": dict(Counter(r["kind"] for r in survey.rejects)),
        "ignored_reasons": dict(Counter(reason for _, reason in survey.ignored)),
        "class_names": survey.class_names,
        "classes": survey.class_counts(),
        "duplicates": duplicates,
        "notes": survey.notes,
        **_mias_columns(survey),
    }
    problems = [
        p
        for p in (rejected_fraction_problem(survey, max_rejected_fraction), empty_classes_problem(survey))
        if p
    ]
    split = _split(survey, test_fraction, val_fraction, seed, problems)
    report.update(_split_report(survey, split, seed))
    report["leakage"] = {
        "groups_across_splits": report.pop("_groups_across_splits"),
        "duplicate_files": sum(len(d["paths"]) for d in duplicates),
        "duplicate_sets": len(duplicates),
        "groups": int(sum(n > 1 for n in Counter(r["group"] for r in survey.accepted).values())),
    }
    if survey.dicom_summary():
        report["dicom"] = survey.dicom_summary()
        report["patients"] = _patients(split, report["dicom"])
    report["problems"] = problems
    return report


def _patients(table: pd.DataFrame | None, summary: dict) -> dict:
    """Pseudonymous patients: how many, films per patient, per split, and across splits."""
    report = {
        "patients": summary["patients"],
        "images_per_patient": summary["images_per_patient"],
        "splits": {},
        "patients_across_splits": 0,
    }
    if table is None or "patient" not in table:
        return report
    known = table[table["patient"].fillna("") != ""]
    report["splits"] = {s: int(known.loc[known["split"] == s, "patient"].nunique()) for s in vocab.SPLITS}
    report["patients_across_splits"] = int((known.groupby("patient")["split"].nunique() > 1).sum())
    return report


def _split(survey: Survey, test_fraction, val_fraction, seed, problems: list[str]) -> pd.DataFrame | None:
    if not survey.accepted:
        return None
    from medkfp.components.preprocess.split import split_examples  # scikit-learn: once the source is read

    table = pd.DataFrame(survey.accepted)
    try:
        table["split"] = split_examples(table["label"], test_fraction, val_fraction, seed, table["group"])
    except ValueError as e:
        problems.append(str(e))
        return None
    return table


def _split_report(survey: Survey, table: pd.DataFrame | None, seed: int) -> dict:
    from medkfp.components.balance.logic import balanced_counts, class_weights
    from medkfp.components.preprocess.split import groups_across_splits

    names = survey.class_names
    if table is None:
        return {
            "splits": {},
            "split_totals": {},
            "balanced_train": {},
            "class_weights": {},
            "_groups_across_splits": 0,
        }
    splits = {
        s: {
            c: int(n)
            for c, n in table.loc[table["split"] == s, "label"]
            .value_counts()
            .reindex(names, fill_value=0)
            .items()
        }
        for s in vocab.SPLITS
    }
    train = table.loc[table["split"] == "train", "label"].to_numpy(dtype=object)
    balanced = {s: balanced_counts(train, names, s, seed) for s in RESAMPLING}
    balanced["class_weight"] = dict(splits["train"])
    return {
        "splits": splits,
        "split_totals": {s: sum(c.values()) for s, c in splits.items()},
        "balanced_train": balanced,
        "class_weights": class_weights(train, names) if len(train) else {},
        "_groups_across_splits": groups_across_splits(table["group"], table["split"]),
    }


def _mias_columns(survey: Survey) -> dict:
    """Severity and tissue counts of a MIAS survey (the labels --label severity would use)."""
    if "severity" not in survey.meta_columns:
        return {}
    severity = Counter(r["severity"] for r in survey.accepted)
    tissue = Counter(vocab.MIAS_TISSUES.get(r["tissue"], r["tissue"]) for r in survey.accepted)
    abnormality = Counter(r["abnormality"] for r in survey.accepted)
    return {
        "severity": {s: int(severity[s]) for s in vocab.SEVERITY_CLASSES},
        "tissue": dict(sorted(tissue.items())),
        "abnormality": {c: int(abnormality[c]) for c in vocab.MIAS_CLASSES},
    }


def render(report: dict, console=None) -> None:
    """Print a plan report as tables (the non --json output)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = console or Console()
    console.print(
        f"[bold]{report['dataset']}[/] from {escape(report['source'])} (label: {report['label']}): "
        f"found {report['found']}, accepted {report['accepted']}, rejected {report['rejected']}, "
        f"ignored {report['ignored']}"
    )
    if report["rejects"]:
        table = Table(title="rejected files")
        table.add_column("path")
        table.add_column("reason")
        for r in report["rejects"]:
            table.add_row(escape(r["path"]), escape(r["reason"]))
        console.print(table)
    if report["splits"]:
        table = Table(title="images per class and split (balanced: train after each strategy)")
        columns = ["class", *vocab.SPLITS, *(f"train {s}" for s in RESAMPLING), "class weight"]
        for column in columns:
            table.add_column(column, justify="left" if column == "class" else "right")
        for c in report["class_names"]:
            table.add_row(
                escape(c),
                *(str(report["splits"][s][c]) for s in vocab.SPLITS),
                *(str(report["balanced_train"][s][c]) for s in RESAMPLING),
                f"{report['class_weights'][c]:.3f}",
            )
        table.add_row(
            "total",
            *(str(report["split_totals"][s]) for s in vocab.SPLITS),
            *(str(sum(report["balanced_train"][s].values())) for s in RESAMPLING),
            "",
        )
        console.print(table)
    for key in ("severity", "tissue"):
        if key in report:
            console.print(f"{key}: " + ", ".join(f"{k} {v}" for k, v in report[key].items()))
    leak = report["leakage"]
    console.print(
        f"leakage: {leak['groups_across_splits']} group(s) across splits; {leak['groups']} group(s) "
        f"of 2+ images kept together; {leak['duplicate_files']} file(s) in {leak['duplicate_sets']} "
        "set(s) of identical files"
    )
    if "patients" in report:
        patients = report["patients"]
        films = ", ".join(f"{n} with {k}" for k, n in patients["images_per_patient"].items())
        per_split = ", ".join(f"{s} {n}" for s, n in patients["splits"].items())
        console.print(
            f"patients: {patients['patients']} ({films} film(s)); per split: {per_split}; "
            f"{patients['patients_across_splits']} across splits"
        )
    for note in report["notes"]:
        console.print(f"note: {escape(note)}")
    for problem in report["problems"]:
        console.print(f"[red]problem:[/] {escape(problem)}")
