"""Self-contained HTML reports, for the KFP UI and for files: one per candidate, one comparing candidates.

The candidate report has training curves, a confusion-matrix heat map, a per-class table and a
reliability diagram; the comparison across candidates is like the COVID-19 study's Table IX.
Scores carry their 95% bootstrap intervals. Figures are matplotlib PNGs embedded as base64.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from medkfp.metrics import SCALARS  # noqa: E402
from medkfp.model_card import CI_LABEL  # noqa: E402

STYLE = (
    "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin:.8em 0}"
    "td,th{border:1px solid #bbb;padding:.25em .6em;text-align:right}"
    "th:first-child,td:first-child{text-align:left}tr.selected{background:#e8f4e8}"
)
PER_CLASS_COLUMNS = ("precision", "recall", "specificity", "f1", "roc_auc", "support")


def png_base64(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def img(data: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def interval(ci) -> str | None:
    """ "[lo, hi]" of a bootstrap interval, None when there is none."""
    return None if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def with_interval(value, ci) -> str | None:
    """ "0.912 [0.850, 0.961]": a score and its interval, for a comparison cell."""
    if value is None:
        return None
    return f"{value:.3f} {interval(ci)}" if ci else f"{value:.4f}"


def table(header: list[str], rows: list[list], row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        css = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{fmt(v)}</td>" for v in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def training_curves(history: dict[str, list[float]]) -> str | None:
    """Loss and accuracy per epoch, train and validation; None without a history."""
    if not history or not history.get("loss"):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            if history.get(key):
                epochs = np.arange(1, len(history[key]) + 1)
                ax.plot(epochs, history[key], marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(metric)
        ax.legend()
    return png_base64(fig)


def confusion_heatmap(matrix, class_names) -> str:
    """Rows actual, columns predicted; colour is the row share, text the count."""
    matrix = np.asarray(matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.8 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    for (i, j), n in np.ndenumerate(matrix):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the actual class")
    return png_base64(fig)


def reliability_diagram(reliability: dict) -> str:
    """Accuracy against confidence per bin, before and after temperature scaling, over the
    diagonal of perfect calibration; bar widths are the bins, markers sized by count."""
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    for key, label, colour in (
        ("uncalibrated", "before scaling", "tab:orange"),
        ("calibrated", "after (served)", "tab:blue"),
    ):
        bins = [b for b in reliability.get(key) or [] if b["count"]]
        if not bins:
            continue
        total = sum(b["count"] for b in bins)
        ax.plot(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            marker="o",
            color=colour,
            label=label,
        )
        ax.scatter(
            [b["confidence"] for b in bins],
            [b["accuracy"] for b in bins],
            s=[20 + 300 * b["count"] / total for b in bins],
            color=colour,
            alpha=0.3,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize="small")
    return png_base64(fig)


def scalar_rows(metrics: dict) -> list[list]:
    ci = metrics.get("ci") or {}
    return [[name.replace("_", " "), metrics.get(name), interval(ci.get(name))] for name in SCALARS]


def per_class_table(metrics: dict) -> str:
    rows = []
    for name, m in metrics["per_class"].items():
        ci = m.get("ci") or {}
        rows.append(
            [
                name,
                m.get("precision"),
                m.get("recall"),
                interval(ci.get("recall")),
                m.get("specificity"),
                interval(ci.get("specificity")),
                m.get("f1"),
                m.get("roc_auc"),
                m.get("support"),
            ]
        )
    header = [
        "class",
        "precision",
        "recall (sensitivity)",
        f"recall {CI_LABEL}",
        "specificity",
        f"specificity {CI_LABEL}",
        "F1",
        "ROC-AUC",
        "support",
    ]
    return table(header, rows)


def calibration_section(metrics: dict, reliability: dict | None) -> str:
    """ECE before and after temperature scaling, the temperature, and the diagram."""
    calibration = metrics.get("calibration")
    if not calibration:
        return ""
    rows = [
        ["ECE of the served (temperature-scaled) probabilities", calibration["ece"]],
        ["ECE before temperature scaling", calibration["ece_uncalibrated"]],
        ["temperature (fitted on the validation split)", calibration["temperature"]],
    ]
    parts = [
        "<h2>Calibration</h2>",
        table(["", "value"], rows),
        "<p>The served model divides its logits by the temperature before the softmax; "
        "the top class, and so every score above, is unchanged.</p>",
    ]
    if reliability:
        parts.append(img(reliability_diagram(reliability), "reliability diagram"))
    return "".join(parts)


def candidate_report(evaluation: dict, title: str | None = None) -> str:
    """HTML report of one evaluation (evaluate step or external validation)."""
    metrics = evaluation["metrics"]
    candidate = evaluation.get("candidate") or {}
    title = title or f"Candidate {candidate.get('name', '?')} on the {evaluation.get('split', 'test')} split"
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if candidate:
        config = [[k, v] for k, v in candidate.items() if k != "name"]
        parts.append("<h2>Configuration</h2>" + table(["setting", "value"], config))
    parts.append(
        "<h2>Scores</h2>"
        + table(["metric", "value", CI_LABEL], scalar_rows(metrics))
        + f"<p>{CI_LABEL}: stratified bootstrap over the test split's images.</p>"
    )
    parts.append("<h2>Per class</h2>" + per_class_table(metrics))
    parts.append(
        "<h2>Confusion matrix</h2>"
        + img(confusion_heatmap(metrics["confusion_matrix"], metrics["class_names"]), "confusion matrix")
    )
    parts.append(calibration_section(metrics, evaluation.get("reliability")))
    curves = training_curves(evaluation.get("history") or {})
    if curves:
        parts.append("<h2>Training curves</h2>" + img(curves, "training curves"))
    if evaluation.get("devices"):
        parts.append(f"<p>Trained on: {html.escape(', '.join(evaluation['devices']))}</p>")
    return page(title, parts)


def best_val_loss(history: dict | None) -> float | None:
    values = (history or {}).get("val_loss")
    return float(min(values)) if values else None


def comparison_row(
    name: str, candidate: dict | None, metrics: dict, val_loss, class_names, mark: str
) -> list:
    """One row of the comparison: scores with their intervals, ECE, recall per class."""
    ci = metrics.get("ci") or {}
    calibration = metrics.get("calibration") or {}
    recalls = [(metrics.get("per_class") or {}).get(n, {}).get("recall") for n in class_names]
    return [
        mark,
        name,
        (candidate or {}).get("architecture"),
        (candidate or {}).get("balancing"),
        val_loss,
        with_interval(metrics.get("accuracy"), ci.get("accuracy")),
        with_interval(metrics.get("balanced_accuracy"), ci.get("balanced_accuracy")),
        with_interval(metrics.get("macro_f1"), ci.get("macro_f1")),
        metrics.get("weighted_f1"),
        metrics.get("macro_roc_auc"),
        calibration.get("ece"),
        *recalls,
    ]


def overlap_note(summary: dict) -> str:
    """Which candidates' selection-metric intervals overlap the selected one's: those
    differences are within the test split's sampling noise."""
    metric = summary["selection_metric"]
    by_name = {c["name"]: c for c in summary["candidates"]}
    best = (by_name.get(summary["selected"], {}).get("metrics") or {}).get("ci", {}).get(metric)
    if not best:
        return ""
    overlapping = [
        name
        for name, c in by_name.items()
        if name != summary["selected"]
        and (ci := (c["metrics"].get("ci") or {}).get(metric))
        and ci[0] <= best[1]
        and best[0] <= ci[1]
    ]
    if not overlapping:
        return (
            f"<p>The selected candidate's {metric} interval overlaps no other candidate's: "
            "its lead is larger than the test split's sampling noise.</p>"
        )
    return (
        f"<p>The {metric} intervals of {html.escape(', '.join(overlapping))} overlap the "
        "selected candidate's: on this test split those differences may be noise.</p>"
    )


def comparison_report(summary: dict, evaluations: list[dict]) -> str:
    """One table across the run's candidates (and the champion), with the push decision.

    The selected candidate is marked; accuracy, balanced accuracy and macro-F1 show their
    95% bootstrap intervals, so a difference between candidates is read with its uncertainty.
    """
    class_names = summary["candidates"][0]["metrics"]["class_names"] if summary["candidates"] else []
    header = [
        "",
        "model",
        "architecture",
        "balancing",
        "best val loss",
        f"accuracy {CI_LABEL}",
        f"balanced acc. {CI_LABEL}",
        f"macro-F1 {CI_LABEL}",
        "weighted F1",
        "ROC-AUC",
        "ECE",
        *(f"recall {c}" for c in class_names),
    ]
    histories = {e["candidate"]["name"]: e.get("history") for e in evaluations}
    rows, classes = [], []
    for c in summary["candidates"]:
        selected = c["name"] == summary["selected"]
        val_loss = best_val_loss(histories.get(c["name"]))
        rows.append(
            comparison_row(
                c["name"], c, c["metrics"], val_loss, class_names, "\u2713 selected" if selected else ""
            )
        )
        classes.append("selected" if selected else "")
    champion = summary.get("champion")
    if champion:
        rows.append(
            comparison_row(
                f"champion v{champion['version']}",
                champion.get("candidate"),
                champion["metrics"],
                None,
                class_names,
                "",
            )
        )
        classes.append("")
    pushed = summary["pushed"]
    decision = f"Pushed {pushed['model_name']} v{pushed['version']}" if pushed else "Nothing pushed"
    title = f"{summary['dataset']}: candidates on the test split"
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        table(header, rows, classes),
        f"<p>Selected <b>{html.escape(summary['selected'])}</b> by "
        f"{html.escape(summary['selection_metric'])} (balanced accuracy breaks ties). "
        f"{CI_LABEL}: stratified bootstrap over the test images; ECE: expected calibration "
        "error of the served, temperature-scaled probabilities.</p>",
        overlap_note(summary),
        f"<p><b>{html.escape(decision)}</b>: {html.escape(summary['push_reason'])}</p>",
    ]
    return page(title, parts)


def write_report(evaluation: dict, report_path, title: str | None = None) -> None:
    """Write a candidate's report to `report_path`; nothing when it is empty."""
    if report_path:
        write_html(report_path, candidate_report(evaluation, title))


def write_html(path, text: str) -> None:
    """Write a report to `path` (a KFP HTML artifact's file or a user's --report file)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def page(title: str, parts: list[str]) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )
