"""KFP wrapper of the balance step."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Output

from medkfp import vocab


@dsl.component(base_image=vocab.COMPONENT_IMAGE, install_kfp_package=False)
def balance(
    dataset: Input[Artifact],
    candidate: dict,
    seed: int,
    balanced: Output[Artifact],
    class_balance: Output[HTML],
):
    """Resample (or weight) the train split for the candidate's balancing strategy."""
    from medkfp.artifacts import announce_candidate, read_json_artifact, write_json_artifact
    from medkfp.components.balance.logic import balance, write_balance_html

    announce_candidate(candidate["name"])
    summary = balance(read_json_artifact(dataset), candidate["balancing"], seed)
    write_json_artifact(balanced, summary, strategy=summary["strategy"], count=summary["count"])
    write_balance_html(class_balance.path, summary)
