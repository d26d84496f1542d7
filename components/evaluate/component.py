"""KFP wrapper of the evaluate step."""

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Input, Metrics, Model, Output

from medkfp import vocab


@dsl.component(base_image=vocab.COMPONENT_IMAGE, install_kfp_package=False)
def evaluate(
    dataset: Input[Artifact],
    model: Input[Model],
    evaluation: Output[Artifact],
    confusion: Output[ClassificationMetrics],
    scores: Output[Metrics],
):
    """Score one candidate on the test split; log its confusion matrix and scalars."""
    from medkfp.artifacts import read_json_artifact, write_json_artifact
    from medkfp.components.evaluate.logic import evaluate

    summary = evaluate(read_json_artifact(dataset), read_json_artifact(model))
    metrics = summary["metrics"]
    confusion.log_confusion_matrix(metrics["class_names"], metrics["confusion_matrix"])
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1"):
        scores.log_metric(key, metrics[key])
    write_json_artifact(
        evaluation, summary, candidate=summary["candidate"]["name"], macro_f1=metrics["macro_f1"]
    )
