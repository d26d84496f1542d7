"""KFP wrapper of the evaluate step."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Input, Metrics, Model, Output

from medkfp import vocab


@dsl.component(base_image=vocab.COMPONENT_IMAGE, install_kfp_package=False)
def evaluate(
    dataset: Input[Artifact],
    model: Input[Model],
    evaluation: Output[Artifact],
    confusion: Output[ClassificationMetrics],
    scores: Output[Metrics],
    report: Output[HTML],
):
    """Score one candidate on the test split; log its confusion matrix, scalars and report."""
    from medkfp.artifacts import announce_candidate, read_json_artifact, write_json_artifact
    from medkfp.components.evaluate.logic import evaluate
    from medkfp.metrics import ui_scalars

    announce_candidate(read_json_artifact(model)["candidate"]["name"])
    summary = evaluate(read_json_artifact(dataset), read_json_artifact(model), report_path=report.path)
    metrics = summary["metrics"]
    confusion.log_confusion_matrix(metrics["class_names"], metrics["confusion_matrix"])
    for key, value in ui_scalars(metrics).items():
        scores.log_metric(key, value)
    write_json_artifact(
        evaluation, summary, candidate=summary["candidate"]["name"], macro_f1=metrics["macro_f1"]
    )
