"""Self-contained HTML reports for the KFP UI and for files: one per candidate (training curves,
confusion-matrix heat map, per-class table) and one comparison across candidates, like the
COVID-19 study's Table IX. Figures are matplotlib PNGs embedded as base64.
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


def scalar_rows(metrics: dict) -> list[list]:
    return [[name.replace("_", " "), metrics.get(name)] for name in SCALARS]


def per_class_table(metrics: dict) -> str:
    rows = [[name, *(m.get(c) for c in PER_CLASS_COLUMNS)] for name, m in metrics["per_class"].items()]
    header = ["class", "precision", "recall (sensitivity)", "specificity", "F1", "ROC-AUC", "support"]
    return table(header, rows)


def candidate_report(evaluation: dict, title: str | None = None) -> str:
    """HTML report of one evaluation (evaluate step or external validation)."""
    metrics = evaluation["metrics"]
    candidate = evaluation.get("candidate") or {}
    title = title or f"Candidate {candidate.get('name', '?')} on the {evaluation.get('split', 'test')} split"
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if candidate:
        config = [[k, v] for k, v in candidate.items() if k != "name"]
        parts.append("<h2>Configuration</h2>" + table(["setting", "value"], config))
    parts.append("<h2>Scores</h2>" + table(["metric", "value"], scalar_rows(metrics)))
    parts.append("<h2>Per class</h2>" + per_class_table(metrics))
    parts.append("<h2>Confusion matrix</h2>"
                 + img(confusion_heatmap(metrics["confusion_matrix"], metrics["class_names"]),
                       "confusion matrix"))
    curves = training_curves(evaluation.get("history") or {})
    if curves:
        parts.append("<h2>Training curves</h2>" + img(curves, "training curves"))
    if evaluation.get("devices"):
        parts.append(f"<p>Trained on: {html.escape(', '.join(evaluation['devices']))}</p>")
    return page(title, parts)


def best_val_loss(history: dict | None) -> float | None:
    values = (history or {}).get("val_loss")
    return float(min(values)) if values else None


def comparison_report(summary: dict, evaluations: list[dict]) -> str:
    """One table across the run's candidates (and the champion), with the push decision."""
    class_names = summary["candidates"][0]["metrics"]["class_names"] if summary["candidates"] else []
    header = ["model", "architecture", "balancing", "best val loss", "accuracy", "balanced acc.",
              "macro-F1", "weighted F1", "ROC-AUC", *(f"recall {c}" for c in class_names)]
    histories = {e["candidate"]["name"]: e.get("history") for e in evaluations}
    rows, classes = [], []
    for c in summary["candidates"]:
        m = c["metrics"]
        rows.append([c["name"], c["architecture"], c["balancing"], best_val_loss(histories.get(c["name"])),
                     m["accuracy"], m["balanced_accuracy"], m["macro_f1"], m["weighted_f1"],
                     m.get("macro_roc_auc"), *(m["per_class"][n]["recall"] for n in class_names)])
        classes.append("selected" if c["name"] == summary["selected"] else "")
    champion = summary.get("champion")
    if champion:
        m = champion["metrics"]
        recalls = [m["per_class"].get(n, {}).get("recall") for n in class_names]
        rows.append([f"champion v{champion['version']}", champion.get("candidate", {}).get("architecture"),
                     champion.get("candidate", {}).get("balancing"), None, m.get("accuracy"),
                     m.get("balanced_accuracy"), m.get("macro_f1"), m.get("weighted_f1"),
                     m.get("macro_roc_auc"), *recalls])
        classes.append("")
    pushed = summary["pushed"]
    decision = (f"Pushed {pushed['model_name']} v{pushed['version']}" if pushed else "Nothing pushed")
    title = f"{summary['dataset']}: candidates on the test split"
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        table(header, rows, classes),
        f"<p>Selected <b>{html.escape(summary['selected'])}</b> by "
        f"{html.escape(summary['selection_metric'])} (balanced accuracy breaks ties).</p>",
        f"<p><b>{html.escape(decision)}</b>: {html.escape(summary['push_reason'])}</p>",
    ]
    return page(title, parts)


def write_html(path, text: str) -> None:
    """Write a report to `path` (a KFP HTML artifact's file or a user's --report file)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


def page(title: str, parts: list[str]) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
