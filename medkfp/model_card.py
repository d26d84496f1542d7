"""The one model card builder: a Markdown MODEL_CARD.md from a version's metadata."""

from __future__ import annotations

from medkfp import vocab
from medkfp.vocab import CONFIDENCE

CI_LABEL = f"{CONFIDENCE:.0%} CI"
# The windowing line for pipeline runs on files that need none (everything but DICOM).
NO_WINDOWING = "none: the training images were PNG/JPEG/PGM files, used as they are"
EXTERNAL = "unknown (published from outside the pipeline)"


def model_card(model: str, version: int, metadata: dict) -> str:
    """MODEL_CARD.md of `model` v`version`: model, data, test metrics, intended use, limits.

    `metadata` is what the repository stores beside the version; a version the pipeline
    pushed carries its candidate, devices, windowing, data snapshot and gate decision, one
    published from outside (`medkfp models publish`) whatever it was given.
    """
    metrics = metadata.get("metrics") or {}
    candidate = metadata.get("candidate")
    classes = metadata.get("class_names") or metrics.get("class_names") or []
    lines = [
        f"# Model card: {model} v{version}",
        "",
        "## Model",
        f"- Candidate: {candidate_line(candidate)}",
        f"- Classes: {', '.join(classes) if classes else 'see the model'}",
        f"- Input: `{vocab.SIGNATURE}` takes `{vocab.INPUT_KEY}`, the encoded PNG/JPEG file "
        "bytes; decoding, resizing and preprocessing run inside the graph.",
        f"- Run: {metadata.get('run_id', 'n/a')}; created {metadata.get('created', 'n/a')}",
    ]
    if candidate:
        lines += [
            f"- Trained on: {', '.join(metadata.get('devices') or ['unknown'])}",
            f"- Windowing: {metadata.get('windowing') or NO_WINDOWING}",
        ]
    lines += ["", "## Data", f"- Dataset: {metadata.get('dataset', 'not recorded')}"]
    if candidate:
        lines.append(f"- Data: {snapshot_line(metadata.get('snapshot'))}")
    if metadata.get("gate"):
        lines.append(f"- Pushed because: {metadata['gate']['reason']}")
    if metrics:
        lines += ["", "## Metrics (held-out test split)", score_lines(metrics)]
        if metrics.get("per_class"):
            lines += [
                "",
                "| class | precision | recall | specificity | F1 | support |",
                "|---|---|---|---|---|---|",
                per_class_rows(metrics["per_class"]),
            ]
    lines += [
        "",
        "## Intended use",
        "Research and workflow support, such as ordering a reading worklist. Every output is "
        "to be reviewed by a qualified reader.",
        "",
        "## Limitations",
        "- Not for diagnosis without clinical validation on the target site's data and devices.",
        "- Metrics come from a held-out split of the training source; other scanners, sites or "
        "populations can perform worse.",
        "- Classes not in the list above are forced into one of them.",
        "",
    ]
    return "\n".join(lines)


def candidate_line(candidate: dict | None) -> str:
    """The candidate's name and configuration, or a note that it came from outside."""
    if not candidate:
        return EXTERNAL
    config = ", ".join(f"{k} {v}" for k, v in candidate.items() if k != "name")
    return f"{candidate.get('name', 'unnamed')} ({config})" if config else candidate.get("name", "unnamed")


def snapshot_line(snapshot: dict | None) -> str:
    """The line naming the data snapshot the version was trained on."""
    if not snapshot:
        return "no snapshot recorded"
    return (
        f"snapshot {snapshot['id']}: {snapshot['files']} files of {snapshot['source']}, "
        f"listed {snapshot['listed_at']} ({snapshot['uri']})"
    )


def _number(value, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "n/a"


def score_lines(metrics: dict) -> str:
    """Test scores with their 95% bootstrap intervals, and how the served probabilities are
    calibrated."""
    ci = metrics.get("ci") or {}

    def scored(key: str, label: str) -> str:
        value = metrics.get(key)
        if value is None:
            return f"{label} n/a"
        bounds = ci.get(key)
        return f"{label} {value:.4f}" + (f" ({CI_LABEL} {bounds[0]:.4f}-{bounds[1]:.4f})" if bounds else "")

    lines = [
        f"- Test {scored('accuracy', 'accuracy')}, {scored('balanced_accuracy', 'balanced accuracy')},",
        f"  {scored('macro_f1', 'macro-F1')}, {scored('macro_roc_auc', 'macro ROC-AUC')}"
        + ("; intervals: stratified bootstrap over the test images" if ci else ""),
    ]
    calibration = metrics.get("calibration")
    if calibration:
        lines.append(
            f"- Calibrated probabilities: the served model divides its logits by a temperature of "
            f"{calibration['temperature']:.3f} (fitted on the validation split) before the softmax; "
            f"expected calibration error on the test split {_number(calibration.get('ece'))} "
            f"(uncalibrated {_number(calibration.get('ece_uncalibrated'))})"
        )
    return "\n".join(lines)


def per_class_rows(per_class: dict) -> str:
    """The per-class table's rows: precision, recall, specificity, F1 and support."""
    return "\n".join(
        f"| {name} | "
        + " | ".join(_number(m.get(k), 3) for k in ("precision", "recall", "specificity", "f1"))
        + f" | {m.get('support', 'n/a')} |"
        for name, m in per_class.items()
    )
