"""KFP wrapper of the train step."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from medkfp import vocab


@dsl.component(base_image=vocab.COMPONENT_IMAGE, install_kfp_package=False)
def train(
    dataset: Input[Artifact],
    balanced: Input[Artifact],
    candidate: dict,
    seed: int,
    model: Output[Model],
):
    """Train one candidate (resuming from its stored checkpoint) and export its SavedModel."""
    from medkfp.artifacts import announce_candidate, read_json_artifact, write_json_artifact
    from medkfp.components.train.logic import train

    announce_candidate(candidate["name"])
    summary = train(read_json_artifact(dataset), read_json_artifact(balanced), candidate, seed)
    write_json_artifact(
        model,
        summary,
        candidate=summary["candidate"]["name"],
        model_uri=summary["model_uri"],
        devices=summary["devices"],
        epochs_run=summary["epochs_run"],
        resumed_from_epoch=summary["resumed_from_epoch"],
    )
