"""KFP wrapper of the ingest step."""

from kfp import dsl
from kfp.dsl import Artifact, Output

from medkfp import vocab


@dsl.component(base_image=vocab.COMPONENT_IMAGE, install_kfp_package=False)
def ingest(
    dataset: str,
    source: str,
    store: str,
    run_id: str,
    manifest: Output[Artifact],
    label: str = "class",
    max_rejected_fraction: float = 0.5,  # a literal: KFP runs this source alone; = vocab's default
    labels: str = "",
):
    """Scan and check the raw images (folder, archive or s3:// prefix), upload them, write the manifest."""
    from medkfp.artifacts import write_json_artifact
    from medkfp.components.ingest.logic import ingest

    summary = ingest(
        dataset,
        source,
        store,
        run_id,
        label=label,
        max_rejected_fraction=max_rejected_fraction,
        labels=labels,
    )
    write_json_artifact(manifest, summary, **summary["counts"])
