"""Balance: resample the train split at manifest level, or weight its classes.

The result is a repeat count per train image id (0 drops it, 2 shows it twice per epoch);
training streams its shards through that table, so no image bytes are copied. `class_weight`
keeps every image once and hands training sklearn's "balanced" per-class loss weights.
Validation and test are never touched.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from imblearn.over_sampling import RandomOverSampler
from imblearn.under_sampling import RandomUnderSampler
from sklearn.utils.class_weight import compute_class_weight

from medkfp import vocab
from medkfp.errors import InvalidInputError
from medkfp.store import open_store
from medkfp.tables import read_examples

SAMPLERS = {"undersample": RandomUnderSampler, "oversample": RandomOverSampler}


def resample_ids(ids: np.ndarray, labels: np.ndarray, strategy: str, seed: int) -> Counter:
    """Repeat count per id after `strategy` (none / undersample / oversample / class_weight).

    Raises ValueError for an unknown strategy.
    """
    if strategy not in vocab.BALANCING:
        raise InvalidInputError(f"unknown balancing {strategy!r}: use one of {', '.join(vocab.BALANCING)}")
    if strategy not in SAMPLERS:  # none, class_weight: every image once
        return Counter(ids.tolist())
    sampler = SAMPLERS[strategy](random_state=seed)
    resampled, _ = sampler.fit_resample(ids.reshape(-1, 1), labels)
    return Counter(resampled[:, 0].tolist())


def class_weights(labels: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """sklearn's "balanced" weights, n / (classes x count); a class absent from train gets 0."""
    present = [c for c in class_names if (labels == c).any()]
    weights = compute_class_weight("balanced", classes=np.array(present), y=labels)
    by_class = dict(zip(present, weights))
    return {c: float(by_class.get(c, 0.0)) for c in class_names}


def balanced_counts(
    labels: np.ndarray, class_names: list[str], strategy: str, seed: int = 0
) -> dict[str, int]:
    """Train images per class after `strategy` (with repeats), without writing anything."""
    labels = np.asarray(labels, dtype=object)
    ids = np.arange(len(labels)).astype(str).astype(object)
    repeats = resample_ids(ids, np.asarray(labels), strategy, seed)
    after = Counter()
    for image_id, n in repeats.items():
        after[labels[int(image_id)]] += n
    return {c: int(after[c]) for c in class_names}


def balance(dataset_summary: dict, strategy: str, seed: int = 0) -> dict:
    """Balance the train split; writes the repeats CSV and a chart, returns the summary.

    Returns {strategy, seed, repeats_key, before, after, count, chart_key} and, for
    class_weight, class_weights {class: weight}. Raises ValueError for an unknown strategy.
    """
    store = open_store(dataset_summary["store"])
    examples = read_examples(dataset_summary)
    train = examples[examples["split"] == "train"]
    labels = train["label"].to_numpy(dtype=object)
    repeats = resample_ids(train["id"].to_numpy(dtype=object), labels, strategy, seed)
    table = pd.DataFrame({"id": list(repeats), "repeat": list(repeats.values())})
    key = vocab.run_key(dataset_summary["run_id"], "balance", f"{strategy}.csv")
    store.put_text(key, table.to_csv(index=False))
    class_names = dataset_summary["class_names"]
    label_of = dict(zip(train["id"], train["label"]))
    after = Counter()
    for image_id, n in repeats.items():
        after[label_of[image_id]] += n
    summary = {
        "strategy": strategy,
        "seed": seed,
        "repeats_key": key,
        "before": {c: int((labels == c).sum()) for c in class_names},
        "after": {c: int(after[c]) for c in class_names},
        "count": int(sum(repeats.values())),
    }
    if strategy == "class_weight":
        summary["class_weights"] = class_weights(labels, class_names)
    summary["chart_key"] = vocab.run_key(dataset_summary["run_id"], "balance", f"{strategy}.png")
    store.put_bytes(summary["chart_key"], balance_chart(summary))
    return summary


def balance_chart(summary: dict) -> bytes:
    """PNG bar chart of train images per class before and after balancing."""
    import matplotlib

    matplotlib.use("Agg")  # no display in a pipeline container
    from matplotlib.figure import Figure

    names = list(summary["before"])
    x = np.arange(len(names))
    figure = Figure(figsize=(max(5.0, 1.1 * len(names) + 2), 3.6), dpi=100)
    axes = figure.subplots()
    width = 0.4
    before = axes.bar(x - width / 2, [summary["before"][n] for n in names], width, label="before")
    after = axes.bar(
        x + width / 2, [summary["after"][n] for n in names], width, label=f"after {summary['strategy']}"
    )
    axes.bar_label(before, fontsize=7)
    axes.bar_label(after, fontsize=7)
    axes.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    axes.set_ylabel("train images")
    axes.set_title(f"Train split per class: {summary['strategy']}")
    axes.legend(fontsize=8)
    figure.tight_layout()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def balance_html(summary: dict, chart_png: bytes | None = None) -> str:
    """A self-contained HTML page for the KFP UI: the chart (embedded PNG) and a count table."""
    chart = base64.b64encode(chart_png or balance_chart(summary)).decode()
    weights = summary.get("class_weights", {})
    rows = "".join(
        f"<tr><td>{html.escape(c)}</td><td>{summary['before'][c]}</td><td>{summary['after'][c]}</td>"
        + (f"<td>{weights[c]:.3f}</td>" if weights else "")
        + "</tr>"
        for c in summary["before"]
    )
    weight_head = "<th>class weight</th>" if weights else ""
    return (
        f"<html><body><h3>Class balance: {html.escape(summary['strategy'])} (train split)</h3>"
        f'<img alt="train images per class before and after" src="data:image/png;base64,{chart}"/>'
        f"<table border=1 cellpadding=4><tr><th>class</th><th>before</th><th>after</th>{weight_head}</tr>"
        f"{rows}</table><p>train images: {sum(summary['before'].values())} before, "
        f"{summary['count']} after</p></body></html>"
    )


def write_balance_html(path: str, summary: dict) -> None:
    """Write balance_html(summary) to `path` (the KFP HTML artifact's file)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(balance_html(summary))
