"""KFP wrapper of the select-and-push step."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Output

from medkfp import vocab


@dsl.component(base_image=vocab.COMPONENT_IMAGE, install_kfp_package=False)
def push(
    evaluations: Input[list[Artifact]],
    manifest: Input[Artifact],
    dataset: Input[Artifact],
    store: str,
    model_name: str,
    min_delta: float,
    selection_metric: str,
    min_recall: dict,
    summary: Output[Artifact],
    comparison: Output[HTML],
    require_significant: bool = False,
) -> str:
    """Select the best candidate, push it past the champion gate; returns the run summary."""
    import json

    from medkfp.artifacts import read_json_artifact, write_json_artifact
    from medkfp.components.push.logic import push

    result = push(
        [read_json_artifact(e) for e in evaluations],
        read_json_artifact(manifest),
        read_json_artifact(dataset),
        store,
        model_name,
        min_delta,
        selection_metric,
        min_recall,
        comparison_path=comparison.path,
        require_significant=require_significant,
    )
    write_json_artifact(summary, result, selected=result["selected"], reason=result["push_reason"])
    return json.dumps(result)
