"""The champion gate: challenger and served champion scored on the same images, with paired statistics.

The served champion (the repository's stable version of the model) is scored on THIS run's
test split with the evaluate step's code, so both scores come from the same images. The
gate then asks: is the challenger better by at least `min_delta` on the selection metric,
and (with require_significant) is the 95% bootstrap interval of challenger minus champion,
resampling images, entirely above zero? McNemar's exact test on the images where exactly
one of the two is right is reported beside it (`p_value`).
"""

from __future__ import annotations

import html
import tempfile
from pathlib import Path

from medkfp import paired_stats, vocab
from medkfp.metrics import SCALARS
from medkfp.report import confusion_heatmap, img, table
from medkfp.scoring import score_models_on_split

CHALLENGER, CHAMPION = "challenger", "champion"


def recall_checks(metrics: dict, floors: dict[str, float]) -> dict[str, dict]:
    """{class: {floor, recall, met}} for each recall floor."""
    checks = {}
    for name, floor in floors.items():
        recall = metrics["per_class"][name]["recall"]
        checks[name] = {"floor": floor, "recall": recall, "met": recall >= floor}
    return checks


def class_mismatch(champion: dict, class_names) -> str | None:
    """Why `champion` (a version's metadata) cannot be compared on this data, or None."""
    theirs = champion.get("class_names") or (champion.get("metrics") or {}).get("class_names")
    if theirs is None or class_names is None or list(theirs) == list(class_names):
        return None
    return (
        f"champion v{champion['version']} predicts classes {', '.join(theirs)} but this run's data has "
        f"{', '.join(class_names)}: the two cannot be compared on the same images; serve the new "
        "classes under another --name, or retire the champion (medkfp models rollback / a new model name)"
    )


def champion_gate(
    challenger: dict,
    champion: dict | None,
    metric: str,
    min_delta: float,
    min_recall: dict[str, float] | None = None,
    paired: dict | None = None,
    require_significant: bool = False,
) -> dict:
    """The gate's record: scores compared, paired statistics, recall floors, push or not and why.

    Args:
      challenger: the selected evaluation ({"metrics": ...}).
      champion: the served version's metadata plus, when it was scored on this run's
        test split, "rescored" (its metrics there); None when nothing is served.
      paired: paired_stats.compare() of the two on this split (None without a rescore).
      require_significant: push only when the difference's interval lies above zero.
    Returns {metric, challenger, champion, delta, difference_ci, p_value, push, reason, ...}.
    """
    value = challenger["metrics"].get(metric)
    record = {
        "metric": metric,
        "challenger": value,
        "champion": None,
        "delta": None,
        "difference_ci": None,
        "p_value": None,
        "min_delta": min_delta,
        "require_significant": require_significant,
        "compared_on": None,
        "min_recall": recall_checks(challenger["metrics"], min_recall or {}),
    }
    unmet = [f"{n} {c['recall']:.4f} < {c['floor']}" for n, c in record["min_recall"].items() if not c["met"]]
    if unmet:
        return {**record, "push": False, "reason": f"below the recall floor: {'; '.join(unmet)}"}
    if value is None:
        return {**record, "push": False, "reason": f"the challenger has no {metric} to compare"}
    if champion is None:
        return {**record, "push": True, "reason": "no champion yet"}
    version = champion["version"]
    mismatch = class_mismatch(champion, challenger["metrics"].get("class_names"))
    if mismatch:
        return {**record, "push": False, "reason": mismatch}
    rescored = champion.get("rescored")
    best = (rescored or champion["metrics"]).get(metric)
    if best is None:
        return {
            **record,
            "push": False,
            "reason": (
                f"champion v{version} records no {metric}: select by a metric it records, e.g. macro_f1"
            ),
        }
    record.update(champion=best, delta=value - best)
    if rescored is not None:
        images = sum(m["support"] for m in rescored["per_class"].values())
        record["compared_on"] = f"this run's test split ({images} images)"
    else:
        record["compared_on"] = "the champion's recorded metrics (its own test split)"
    if paired:
        record.update(difference_ci=paired["ci"], p_value=paired["p_value"], paired=paired)
    compared = f"{metric} {value:.4f} vs {best:.4f}"
    if paired and paired["ci"][0] is not None:
        low, high = paired["ci"]
        compared += (
            f" on the same {paired['images']} images, difference 95% CI [{low:+.4f}, {high:+.4f}], "
            f"McNemar p={paired['p_value']:.3g}"
        )
    if value < best + min_delta:
        return {
            **record,
            "push": False,
            "reason": f"not better than champion v{version}: {compared} (needs +{min_delta})",
        }
    if require_significant:
        if not paired or paired["ci"][0] is None:
            return {
                **record,
                "push": False,
                "reason": (
                    f"champion v{version} could not be scored on this run's test split, so significance "
                    "is unknown: drop --require-significant or fix the champion"
                ),
            }
        if not paired["ci"][0] > 0:
            return {
                **record,
                "push": False,
                "reason": (
                    f"better than champion v{version} but not significantly: {compared} "
                    "(--require-significant needs the interval's lower bound above 0)"
                ),
            }
    return {
        **record,
        "push": True,
        "reason": f"better than champion v{version}: {compared} (min delta {min_delta})",
    }


def rescore_champion(
    best: dict, champion: dict, repository, run_store, dataset_summary: dict, metric: str
) -> tuple[dict, dict]:
    """Score the challenger and the champion version on this run's test split, image by image.

    Returns (the champion's full metrics on this split, paired_stats.compare() of the two).
    Raises StoreError when a model or the shards cannot be read.
    """
    model_name, version = champion["model_name"], champion["version"]
    with tempfile.TemporaryDirectory(prefix="medkfp-gate-") as tmp:
        tmp = Path(tmp)
        run_store.download_dir(best["model_key"], tmp / CHALLENGER)
        repository.store.download_dir(vocab.model_version_key(model_name, version), tmp / CHAMPION)
        scored = score_models_on_split(
            dataset_summary, {CHALLENGER: tmp / CHALLENGER, CHAMPION: tmp / CHAMPION}, "test"
        )
    a, b = scored[CHALLENGER], scored[CHAMPION]
    probabilities = (
        {"challenger_probabilities": a.probabilities, "champion_probabilities": b.probabilities}
        if metric == "macro_roc_auc"
        else {}
    )
    paired = paired_stats.compare(
        a.labels,
        a.predictions,
        b.predictions,
        len(dataset_summary["class_names"]),
        metric,
        seed=int(dataset_summary["seed"]),
        **probabilities,
    )
    return b.metrics, paired


def gate_section(summary: dict) -> str:
    """HTML: challenger and champion side by side on this run's test split, and the decision."""
    champion = summary.get("champion") or {}
    rescored = champion.get("rescored")
    gate = summary["gate"]
    if not rescored:
        return ""
    challenger = next(c for c in summary["candidates"] if c["name"] == summary["selected"])["metrics"]
    rows = [
        [
            name.replace("_", " "),
            challenger.get(name),
            rescored.get(name),
            None
            if challenger.get(name) is None or rescored.get(name) is None
            else challenger[name] - rescored[name],
        ]
        for name in SCALARS
    ]
    rows += [
        [
            f"recall {n}",
            challenger["per_class"][n]["recall"],
            rescored["per_class"][n]["recall"],
            challenger["per_class"][n]["recall"] - rescored["per_class"][n]["recall"],
        ]
        for n in rescored["class_names"]
    ]
    header = ["metric", f"challenger {summary['selected']}", f"champion v{champion['version']}", "difference"]
    paired = gate.get("paired") or {}
    stats_rows = [
        ["selection metric", gate["metric"]],
        ["difference (challenger - champion)", gate.get("delta")],
        [
            "95% bootstrap interval",
            "n/a"
            if not gate.get("difference_ci")
            else f"[{gate['difference_ci'][0]:+.4f}, {gate['difference_ci'][1]:+.4f}]",
        ],
        ["images where only the challenger is right", paired.get("challenger_only_right")],
        ["images where only the champion is right", paired.get("champion_only_right")],
        ["McNemar exact p-value", gate.get("p_value")],
        ["bootstrap resamples (seed)", f"{paired.get('resamples')} ({paired.get('seed')})"],
    ]
    figures = "".join(
        f"<div style='display:inline-block;margin-right:1em'><h3>{html.escape(title)}</h3>"
        f"{img(confusion_heatmap(m['confusion_matrix'], m['class_names']), title)}</div>"
        for title, m in (
            (f"challenger {summary['selected']}", challenger),
            (f"champion v{champion['version']}", rescored),
        )
    )
    return (
        f"<h2>Challenger vs champion on the same images ({html.escape(gate.get('compared_on') or '')})</h2>"
        + table(header, rows)
        + table(["paired statistic", "value"], stats_rows)
        + figures
        + f"<p><b>{'Pushed' if gate['push'] else 'Not pushed'}</b>: {html.escape(gate['reason'])}</p>"
    )


def with_gate_section(page_html: str, summary: dict) -> str:
    """The comparison page with the side-by-side section added before its end."""
    section = gate_section(summary)
    return page_html.replace("</body>", section + "</body>", 1) if section else page_html


def champion_on_this_split(summary: dict) -> dict:
    """The summary as the comparison table should show it: the champion's row from this split."""
    champion = summary.get("champion")
    if not champion or not champion.get("rescored"):
        return summary
    return {
        **summary,
        "champion": {
            **champion,
            "metrics": champion["rescored"],
            "version": f"{champion['version']} (on this split)",
        },
    }
