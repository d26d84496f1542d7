"""KFP wrapper of the preprocess step."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Output

from medkfp import vocab


@dsl.component(base_image=vocab.COMPONENT_IMAGE, install_kfp_package=False)
def preprocess(
    manifest: Input[Artifact],
    image_size: int,
    test_fraction: float,
    val_fraction: float,
    seed: int,
    dataset: Output[Artifact],
):
    """Split, resize and shard the ingested images."""
    from medkfp.artifacts import read_json_artifact, write_json_artifact
    from medkfp.components.preprocess.logic import preprocess

    summary = preprocess(read_json_artifact(manifest), image_size, test_fraction, val_fraction, seed)
    write_json_artifact(dataset, summary, **{split: s["count"] for split, s in summary["splits"].items()})
